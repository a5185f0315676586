package ledger

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
)

// crashChildEnv makes the test binary the crash test's child: it writes
// rows until it is killed.
const crashChildEnv = "RELAYGATE_LEDGER_CRASH_CHILD"

// The crash child's settings, which bound what a crash may lose.
const (
	crashBatchInterval = 100 * time.Millisecond
	crashFsyncInterval = 100 * time.Millisecond
	crashWriteTimeout  = time.Second
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		crashChild()
		return
	}
	os.Exit(m.Run())
}

// crashChild writes rows 0, 1, … about a thousand a second, printing each
// row's number and time once Write has returned, until it is killed.
func crashChild() {
	l, err := Open(context.Background(), Options{URL: os.Getenv("LEDGER_URL"), SpillDir: os.Getenv("LEDGER_SPILL"),
		BatchInterval: crashBatchInterval, FsyncInterval: crashFsyncInterval, WriteTimeout: crashWriteTimeout,
		Logger: quietLogger()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		l.Write(testRow(i))
		fmt.Fprintf(os.Stdout, "%d %d\n", i, time.Now().UnixNano())
		time.Sleep(time.Millisecond)
	}
}

// TestCrashLoss measures what a crash loses: a child process writing rows
// is killed with SIGKILL, a new ledger on its spill directory replays what
// it left, and the rows in Postgres are counted. With Postgres up the rows
// lost are those in memory (the queue, the batch being built or
// committed); with it down, those not yet flushed to the spill file. Either
// way what survives is every row up to some point, and what is lost is the
// last rows written: the documented bound is batch_interval +
// fsync_interval (here 100ms each), plus write_timeout while a write hangs.
// The assertion allows far more, so that a slow machine cannot fail it;
// the log says what was measured.
func TestCrashLoss(t *testing.T) {
	for _, mode := range []string{"postgres up", "postgres down"} {
		t.Run(strings.ReplaceAll(mode, " ", "-"), func(t *testing.T) {
			pg := testenv.StartPostgres(t)
			if mode == "postgres down" {
				pg.Stop()
			}
			dir := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashChildEnv+"=1", "LEDGER_URL="+pg.URL, "LEDGER_SPILL="+dir)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var written []time.Time // written[i]: when Write(row i) returned
			enough := make(chan struct{})
			readDone := make(chan struct{})
			go func() {
				defer close(readDone)
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					f := strings.Fields(sc.Text())
					if len(f) != 2 {
						continue
					}
					seq, _ := strconv.Atoi(f[0])
					ns, _ := strconv.ParseInt(f[1], 10, 64)
					mu.Lock()
					if seq == len(written) {
						written = append(written, time.Unix(0, ns))
					}
					if len(written) == 2000 {
						close(enough)
					}
					mu.Unlock()
				}
			}()
			select {
			case <-enough:
			case <-readDone:
				t.Fatalf("the child ended before writing 2000 rows: %s", stderr.String())
			case <-time.After(guard):
				t.Fatal("the child wrote under 2000 rows in a minute")
			}
			killed := time.Now()
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-readDone
			_ = cmd.Wait()

			if mode == "postgres down" {
				pg.Start()
			}
			l := open(t, testOptions(pg.URL, dir))
			waitReplayed(t, l)
			closeLedger(t, l)

			p := pool(t, pg.URL)
			var n, maxSeq int
			if err := p.QueryRow(context.Background(),
				"SELECT count(*), coalesce(max(substr(id, 5)::int), -1) FROM ledger").Scan(&n, &maxSeq); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			w := len(written)
			// The row written just before the kill may be in, its line
			// not yet printed.
			if n != maxSeq+1 || n > w+1 {
				t.Fatalf("%d rows survive, the highest %d, of %d written: what survives must be rows 0 to some point", n, maxSeq, w)
			}
			lost := max(w-n, 0)
			age := time.Duration(0)
			if lost > 0 {
				age = killed.Sub(written[n])
			}
			t.Logf("%s: %d rows written, %d survived the kill, %d lost: the oldest lost was written %s before the kill "+
				"(bound: batch_interval %s + fsync_interval %s)", mode, w, n, lost, age.Round(time.Millisecond), crashBatchInterval, crashFsyncInterval)
			if limit := crashBatchInterval + crashFsyncInterval + crashWriteTimeout + 10*time.Second; age > limit {
				t.Errorf("a row written %s before the crash was lost, beyond even %s", age, limit)
			}
		})
	}
}
