package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// postgresStartTimeout bounds how long StartPostgres and Start wait for the
// server to accept connections: a failure guard, not an expectation (it
// starts in about a second, crash recovery after Stop included).
const (
	postgresStartTimeout = 60 * time.Second
	// postgresOutputTail is how much of its output a failure quotes.
	postgresOutputTail = 2000
)

// Postgres is a real PostgreSQL server owned by one test: a fresh cluster
// made by initdb in t.TempDir(), listening on a free 127.0.0.1 port (and a
// unix socket in the temporary directory only), trust authentication for
// the superuser postgres.
type Postgres struct {
	// URL connects as postgres to the database postgres.
	URL string
	// Addr is host:port on 127.0.0.1.
	Addr string

	t       testing.TB
	bin     string
	port    int
	dataDir string
	sockDir string
	cred    *syscall.Credential // nil: run as ourselves

	mu   sync.Mutex
	proc *child // nil while stopped
}

// StartPostgres runs initdb and starts postgres, waits until it accepts
// connections, and stops it in t.Cleanup. The binaries are Debian's, under
// /usr/lib/postgresql/*/bin (`make test` installs the package). Without
// them the test fails under CI=true and is skipped elsewhere. As root,
// which initdb refuses, the cluster is owned and run by the postgres
// system user the package creates.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin := postgresBinDir(t)
	cred := postgresCredential(t)
	base := t.TempDir()
	p := &Postgres{t: t, bin: bin, cred: cred, dataDir: filepath.Join(base, "data"), sockDir: filepath.Join(base, "sock")}
	if len(p.sockDir) > 90 {
		// A unix socket path is at most 107 bytes; long test names make
		// long temporary directories.
		dir, err := os.MkdirTemp("", "pgsock")
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		p.sockDir = dir
	}
	for _, d := range []string{p.dataDir, p.sockDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	if cred != nil {
		// The postgres user must reach its directories through the test's
		// temporary directories, which are root's and 0700.
		for _, d := range []string{filepath.Dir(base), base, filepath.Dir(p.sockDir)} {
			if d != os.TempDir() && d != "/" {
				_ = os.Chmod(d, 0o711)
			}
		}
		for _, d := range []string{p.dataDir, p.sockDir} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatalf("testenv: chown %s to postgres: %v", d, err)
			}
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", p.dataDir, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = postgresProcAttr(cred)
	initdb.Dir = p.dataDir
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("testenv: initdb: %v\n%s", err, out)
	}

	onFreePort(t, "postgres", func(_, port int) error {
		p.port = port
		p.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p.URL = fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", p.Addr)
		proc, err := p.startProcess()
		if err == nil {
			p.proc = proc
		}
		return err
	})
	t.Cleanup(p.Stop)
	return p
}

// Stop shuts postgres down in immediate mode (pg_ctl stop -m immediate:
// SIGQUIT), as if it crashed: connections break at once, and the next
// Start runs crash recovery. Committed rows survive. Stopping a stopped
// server does nothing.
func (p *Postgres) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return
	}
	stopPostgres(p.proc)
	p.proc = nil
}

// Start starts a stopped postgres again on the same port and data
// directory and waits until it accepts connections. It stops a running one
// first.
func (p *Postgres) Start() {
	p.t.Helper()
	p.Stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	err := retryFor(postgresStartTimeout, 100*time.Millisecond, func() error {
		proc, err := p.startProcess()
		if err == nil {
			p.proc = proc
		}
		return err
	})
	if err != nil {
		p.t.Fatalf("testenv: restart postgres on %s: %v", p.Addr, err)
	}
}

func (p *Postgres) startProcess() (*child, error) {
	cmd := exec.Command(filepath.Join(p.bin, "postgres"), "-D", p.dataDir,
		"-p", strconv.Itoa(p.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+p.sockDir,
		"-c", "max_connections=40",
		"-c", "shared_buffers=16MB",
		// A killed server keeps what it committed without fsync (the
		// kernel has it); only a machine crash would lose it, and tests
		// on a shared machine should not wait on disks.
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "logging_collector=off",
		"-c", "log_min_messages=warning",
	)
	proc, err := startChild(cmd, postgresProcAttr(p.cred))
	if err != nil {
		return nil, err
	}
	out := proc.out
	deadline := time.Now().Add(postgresStartTimeout)
	for {
		select {
		case <-proc.exited:
			return nil, fmt.Errorf("postgres on port %d exited: %s", p.port, out.Tail(postgresOutputTail))
		default:
		}
		// pg_isready is the server's own readiness probe, so the fixture
		// does not depend on the client library under test.
		ready := exec.Command(filepath.Join(p.bin, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-t", "2")
		if ready.Run() == nil {
			return proc, nil
		}
		if time.Now().After(deadline) {
			stopPostgres(proc)
			return nil, fmt.Errorf("postgres on %s not ready within %s; output: %s", p.Addr, postgresStartTimeout, out.Tail(postgresOutputTail))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopPostgres is an immediate shutdown (SIGQUIT); SIGKILL follows if it
// does not end.
func stopPostgres(c *child) {
	_ = c.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		c.kill()
	}
}

// postgresBinDir is the newest /usr/lib/postgresql/N/bin with initdb and
// postgres.
func postgresBinDir(t testing.TB) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) && isExec(filepath.Join(d, "pg_isready")) {
			return d
		}
	}
	missing(t, "postgres is not installed (no initdb, postgres and pg_isready under /usr/lib/postgresql/*/bin); "+
		"`make test` installs it (scripts/install-tools.sh), or run `apt-get install postgresql`")
	return ""
}

func isExec(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// postgresCredential is the postgres system user's, when we are root.
func postgresCredential(t testing.TB) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		missing(t, "running as root, and initdb refuses root, but there is no postgres user to run it as ("+err.Error()+"); "+
			"Debian's postgresql package creates it (`apt-get install postgresql`)")
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		t.Fatalf("testenv: postgres user has uid %q gid %q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
}

// missing fails the test under CI, where a skip would look green while
// proving nothing, and skips it elsewhere.
func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("testenv: %s", msg)
	}
	t.Skipf("testenv: %s (skipped; under CI=true this fails)", msg)
}

// Logs is the server's output so far, for a failing test's message.
func (p *Postgres) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return "(stopped)"
	}
	return p.proc.out.Tail(postgresOutputTail)
}
