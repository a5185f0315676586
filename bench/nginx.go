package bench

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/template"
)

//go:embed nginx.conf.tmpl
var nginxConfTemplate string

var nginxConf = template.Must(template.New("nginx.conf").Parse(nginxConfTemplate))

// nginxRoute is one server block: nginx listening on Listen, proxying to
// one simulator.
type nginxRoute struct {
	Name     string // upstream block name
	Listen   string
	Upstream string // host:port
	Stream   bool   // proxy_buffering off
}

type nginxParams struct {
	Dir         string
	User        string
	NoFile      uint64
	Connections uint64
	KeepAlive   int
	TempPaths   []string
	Routes      []nginxRoute
}

// findNginx returns the nginx binary: the given path, else nginx on PATH,
// else Debian's /usr/sbin/nginx (not on a normal user's PATH).
func findNginx(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, nil
	}
	const debian = "/usr/sbin/nginx"
	if st, err := os.Stat(debian); err == nil && st.Mode()&0o111 != 0 {
		return debian, nil
	}
	return "", errors.New("nginx is not installed (WITH_NGINX=1 scripts/install-tools.sh installs it)")
}

// nginxBuild reads nginx -V: the version line, and which temp-path
// directives the build knows (nginx-light leaves some modules out, and
// naming a missing module's directive is a config error, while leaving a
// present one at its compiled-in default makes nginx write to /var/lib).
func nginxBuild(bin string) (version string, tempPaths []string, err error) {
	out, err := exec.Command(bin, "-V").CombinedOutput()
	if err != nil {
		return "", nil, fmt.Errorf("%s -V: %w: %s", bin, err, out)
	}
	s := string(out)
	first, _, _ := strings.Cut(s, "\n")
	version = strings.TrimPrefix(strings.TrimSpace(first), "nginx version: ")
	for _, m := range []string{"fastcgi", "uwsgi", "scgi"} {
		if !strings.Contains(s, "--without-http_"+m+"_module") {
			tempPaths = append(tempPaths, m+"_temp_path")
		}
	}
	return version, tempPaths, nil
}

// startNginx writes the config for routes into dir and starts nginx with
// one worker, allowed as many open files as the other subjects.
func startNginx(ctx context.Context, bin, dir string, routes []nginxRoute, nofile uint64) (*child, error) {
	_, tempPaths, err := nginxBuild(bin)
	if err != nil {
		return nil, err
	}
	p := nginxParams{
		Dir:    dir,
		NoFile: nofile,
		// nginx counts connections it is still closing against
		// worker_connections; twice the open-files limit leaves that
		// limit the one that binds, as for the Go subjects.
		Connections: 2 * nofile,
		KeepAlive:   floorIdleConns,
		TempPaths:   tempPaths,
		Routes:      routes,
	}
	if os.Geteuid() == 0 {
		// As root nginx would drop its worker to "nobody", which cannot
		// write the suite's private work directory.
		p.User = "root"
	}
	var conf bytes.Buffer
	if err := nginxConf.Execute(&conf, p); err != nil {
		return nil, fmt.Errorf("nginx config: %w", err)
	}
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, conf.Bytes(), 0o600); err != nil {
		return nil, fmt.Errorf("nginx config: %w", err)
	}
	c, err := startChild("nginx", dir, bin, []string{"-p", dir, "-c", confPath, "-e", filepath.Join(dir, "nginx-error.log")}, nil)
	if err != nil {
		return nil, err
	}
	for _, r := range routes {
		if err := c.waitReady(ctx, tcpReady(r.Listen)); err != nil {
			c.stop()
			return nil, fmt.Errorf("%w\nnginx error log: %s", err, tail(filepath.Join(dir, "nginx-error.log")))
		}
	}
	return c, nil
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return string(b)
}

// nofileLimit is the hard limit on open files that children inherit; the
// idle-streams scenario sizes itself by it.
func nofileLimit() (uint64, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	return r.Max, nil
}
