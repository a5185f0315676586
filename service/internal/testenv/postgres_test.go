package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestPostgresStopStart: the fixture's server takes connections, refuses
// them while stopped, and keeps what was committed across an immediate
// shutdown and a restart on the same address.
func TestPostgresStopStart(t *testing.T) {
	pg := StartPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	exec := func(sql string) error {
		c, err := pgx.Connect(ctx, pg.URL)
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		_, err = c.Exec(ctx, sql)
		return err
	}
	if err := exec("CREATE TABLE t (v int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatalf("on a fresh server: %v\n%s", err, pg.Logs())
	}
	pg.Stop()
	if err := exec("SELECT 1"); err == nil {
		t.Fatal("a stopped server took a connection")
	}
	pg.Start()
	c, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatalf("after Start: %v", err)
	}
	defer c.Close(ctx)
	var v int
	if err := c.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 42 {
		t.Fatalf("after a restart: v = %d, %v; committed rows must survive", v, err)
	}
}
