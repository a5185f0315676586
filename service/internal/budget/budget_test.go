package budget

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/testenv"
)

func TestBounds(t *testing.T) {
	at := time.Date(2026, 12, 31, 23, 59, 59, 0, time.FixedZone("x", -5*3600)) // 2027-01-01 04:59:59 UTC
	for _, c := range []struct {
		period, id string
		start, end time.Time
	}{
		{config.PeriodDay, "d2027-01-01", time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 2, 0, 0, 0, 0, time.UTC)},
		{config.PeriodMonth, "m2027-01", time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)},
	} {
		s, e := Bounds(c.period, at)
		if !s.Equal(c.start) || !e.Equal(c.end) || PeriodID(c.period, at) != c.id {
			t.Errorf("%s: %s %s %s, want %s %s %s", c.period, PeriodID(c.period, at), s, e, c.id, c.start, c.end)
		}
	}
}

func TestAdmitAndCharge(t *testing.T) {
	rds := testenv.StartRedis(t)
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	e, err := New(Options{URL: rds.URL, Timeout: 2 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	ctx := context.Background()
	sub := &Subject{
		Key:  Scope{Name: "k", Limits: Limits{RPM: 2, Budget: ToMicros(1.5), Period: config.PeriodDay}},
		Team: &Scope{Name: "t", Limits: Limits{RPM: 3, Budget: ToMicros(10), Period: config.PeriodMonth}},
	}
	for i := 0; i < 2; i++ {
		if d, err := e.Admit(ctx, sub); err != nil || !d.Allowed {
			t.Fatalf("request %d: %+v %v", i, d, err)
		}
	}
	d, err := e.Admit(ctx, sub)
	if err != nil || d.Allowed || d.Reason != ReasonRPM || d.Scope != "key" || d.RetryAfter <= 0 {
		t.Fatalf("third request: %+v %v; want refused by the key's rpm", d, err)
	}
	// The key's refusal took nothing from the team: a key with room (and
	// the same team) gets the team's last request.
	other := &Subject{Key: Scope{Name: "k2"}, Team: sub.Team}
	if d, err := e.Admit(ctx, other); err != nil || !d.Allowed {
		t.Fatalf("k2: %+v %v", d, err)
	}
	if d, _ := e.Admit(ctx, other); d.Allowed || d.Scope != "team" || d.Reason != ReasonRPM {
		t.Fatalf("k2 again: %+v; want the team's rpm", d)
	}

	spent, err := e.Charge(ctx, sub, 100, ToMicros(1.25))
	if err != nil || spent.Key != 1_250_000 || spent.Team != 1_250_000 {
		t.Fatalf("charge: %+v %v", spent, err)
	}
	if spent, _ = e.Charge(ctx, other, 100, ToMicros(0.5)); spent.Team != 1_750_000 {
		t.Fatalf("team spend after k2's charge: %+v", spent)
	}
	rdb := redis.NewClient(&redis.Options{Addr: rds.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	_, dayEnd := Bounds(config.PeriodDay, now)
	exp, err := rdb.ExpireTime(ctx, sub.SpendKey("key", config.PeriodDay, now)).Result()
	if err != nil || exp != time.Duration(dayEnd.Add(RetainAfter).Unix())*time.Second {
		t.Errorf("day spend expires at %v (%v), want %s", exp, err, dayEnd.Add(RetainAfter))
	}
	if v, _ := e.SpendAt(ctx, sub, "team", config.PeriodMonth, now); v != 1_750_000 {
		t.Errorf("team month spend %d", v)
	}
	if v, _ := e.SpendAt(ctx, sub, "key", config.PeriodDay, now.AddDate(0, 0, -1)); v != 0 {
		t.Errorf("yesterday's spend %d, want 0", v)
	}

	// Next minute: the buckets have refilled, but the key's day budget
	// ($1.25 of $1.50) still admits one more; once charged over it, the
	// key is refused until midnight.
	now = now.Add(time.Minute)
	_ = rdb.FlushDB(ctx).Err() // the buckets live on Redis's clock
	if _, err := e.Charge(ctx, sub, 0, ToMicros(1.5)); err != nil {
		t.Fatal(err)
	}
	d, err = e.Admit(ctx, sub)
	if err != nil || d.Allowed || d.Reason != ReasonBudget || d.Scope != "key" || !d.Reset.Equal(dayEnd) || d.RetryAfter != dayEnd.Sub(now) || d.KeySpent != 1_500_000 {
		t.Fatalf("over budget: %+v %v", d, err)
	}

	rds.Stop()
	if _, err := e.Admit(ctx, sub); err == nil {
		t.Error("Admit with Redis down: no error")
	}
}
