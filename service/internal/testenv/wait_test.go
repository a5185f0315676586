package testenv

import (
	"strings"
	"testing"
	"time"
)

func TestReceive(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 7
	if got := Receive(t, ch, time.Minute, "a value"); got != 7 {
		t.Errorf("Receive = %d, want 7", got)
	}

	// Nothing is ever sent: Receive must fail the test, naming what it
	// waited for.
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Receive(rec, make(chan int), time.Millisecond, "the never-sent value")
		t.Error("Receive returned without failing")
	}()
	<-done
	if !strings.Contains(rec.msg, "the never-sent value") {
		t.Errorf("failure message %q does not name what was awaited", rec.msg)
	}
}
