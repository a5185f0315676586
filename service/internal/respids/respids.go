// Package respids remembers which upstream created each Responses API
// response. A response lives on the upstream that made it: a follow-up
// (previous_response_id) or a GET, DELETE, cancel or input_items by its id
// only works there, so the gateway must send it back to that upstream and
// to no other.
//
// Ids are kept in Redis when the gateway has one, so that every replica
// behind a load balancer knows them, for the creating upstream's retention
// (OpenAI keeps stored responses 30 days). A bounded in-process map holds
// them too: it serves a gateway without Redis, and keeps answering while
// Redis is unreachable (each such use is reported through OnLocal).
package respids

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaygate/relaygate/service/internal/redisguard"
)

// keyPrefix namespaces the ids in a Redis the cache and limiter share.
const keyPrefix = "relaygate:resp:"

// DefaultLocalEntries bounds the in-process map: about 100 bytes an id,
// some 10 MB at most.
const DefaultLocalEntries = 100_000

// Owner is where a response lives.
type Owner struct {
	// Upstream is the config name of the upstream that created it.
	Upstream string
	// Model is the gateway model it was asked for (metric labels).
	Model string
}

// Options configures New.
type Options struct {
	// RedisURL, when set, keeps ids in that Redis; empty keeps them in
	// this process only.
	RedisURL string
	// Timeout bounds every Redis call (redisguard.DefaultTimeout when zero).
	Timeout time.Duration
	// LocalEntries bounds the in-process map (DefaultLocalEntries when zero).
	LocalEntries int
	Logger       *slog.Logger
	// OnLocal is told of each Put, Get or Delete that Redis could not
	// serve and the in-process map did instead ("put", "get", "delete").
	OnLocal func(op string)
}

// Store maps response ids to their owners. It is safe for concurrent use.
type Store struct {
	rdb     *redis.Client
	guard   *redisguard.Guard
	local   *localMap
	onLocal func(string)
}

// New returns a Store. It does not contact Redis.
func New(opts Options) (*Store, error) {
	s := &Store{local: newLocalMap(opts.LocalEntries), onLocal: opts.OnLocal}
	if s.onLocal == nil {
		s.onLocal = func(string) {}
	}
	if opts.RedisURL != "" {
		rdb, err := redisguard.NewClient(opts.RedisURL, opts.Timeout)
		if err != nil {
			return nil, fmt.Errorf("response ids: %w", err)
		}
		s.rdb = rdb
		s.guard = redisguard.New(redisguard.Options{Name: "response ids", Timeout: opts.Timeout, Logger: opts.Logger})
	}
	return s, nil
}

// encode is "upstream model": upstream names hold no space (config checks
// them), so the first space splits the two.
func encode(o Owner) string { return o.Upstream + " " + o.Model }

func decode(v string) (Owner, bool) {
	up, model, ok := strings.Cut(v, " ")
	return Owner{Upstream: up, Model: model}, ok && up != ""
}

// Put records that id lives on o for ttl. The in-process map always keeps
// it as well, so a Redis outage after this does not lose it here.
func (s *Store) Put(ctx context.Context, id string, o Owner, ttl time.Duration) error {
	s.local.put(id, o, time.Now().Add(ttl))
	if s.rdb == nil {
		return nil
	}
	err := s.guard.Do(ctx, func(ctx context.Context) error {
		return s.rdb.Set(ctx, keyPrefix+id, encode(o), ttl).Err()
	})
	if err != nil {
		s.onLocal("put")
		return fmt.Errorf("response ids: put: %w", err)
	}
	return nil
}

// Get returns id's owner. ok is false for an id nobody recorded (or whose
// retention is over). A Redis that cannot be asked is replaced by the
// in-process map, which knows the ids this process recorded.
func (s *Store) Get(ctx context.Context, id string) (o Owner, ok bool, err error) {
	if s.rdb == nil {
		o, ok = s.local.get(id, time.Now())
		return o, ok, nil
	}
	var v string
	err = s.guard.Do(ctx, func(ctx context.Context) error {
		var err error
		v, err = s.rdb.Get(ctx, keyPrefix+id).Result()
		if errors.Is(err, redis.Nil) {
			v, err = "", nil
		}
		return err
	})
	if err != nil {
		s.onLocal("get")
		o, ok = s.local.get(id, time.Now())
		return o, ok, fmt.Errorf("response ids: get: %w", err)
	}
	if v == "" {
		// Recorded here while Redis was out, perhaps.
		o, ok = s.local.get(id, time.Now())
		return o, ok, nil
	}
	o, ok = decode(v)
	return o, ok, nil
}

// Delete forgets id, after its upstream deleted the response.
func (s *Store) Delete(ctx context.Context, id string) error {
	s.local.delete(id)
	if s.rdb == nil {
		return nil
	}
	err := s.guard.Do(ctx, func(ctx context.Context) error { return s.rdb.Del(ctx, keyPrefix+id).Err() })
	if err != nil {
		s.onLocal("delete")
		return fmt.Errorf("response ids: delete: %w", err)
	}
	return nil
}

// Status is the Redis state for /health (up when there is no Redis).
func (s *Store) Status() redisguard.Status {
	if s.guard == nil {
		return redisguard.Status{Up: true}
	}
	return s.guard.Status()
}

// Close releases the Redis connections.
func (s *Store) Close() error {
	if s.rdb == nil {
		return nil
	}
	if err := s.rdb.Close(); err != nil {
		return fmt.Errorf("response ids: close: %w", err)
	}
	return nil
}

// localMap is a bounded map from id to owner with expiry: when full, the
// oldest recorded id goes first (a ring of ids in insertion order).
type localMap struct {
	mu      sync.Mutex
	entries map[string]localEntry
	ring    []string
	next    int
}

type localEntry struct {
	owner   Owner
	expires time.Time
	slot    int // the ring slot that holds this id
}

func newLocalMap(n int) *localMap {
	if n <= 0 {
		n = DefaultLocalEntries
	}
	return &localMap{entries: make(map[string]localEntry), ring: make([]string, n)}
}

func (m *localMap) put(id string, o Owner, expires time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.entries[id]; ok {
		e.owner, e.expires = o, expires
		m.entries[id] = e
		return
	}
	if old := m.ring[m.next]; old != "" {
		if e, ok := m.entries[old]; ok && e.slot == m.next {
			delete(m.entries, old)
		}
	}
	m.ring[m.next] = id
	m.entries[id] = localEntry{owner: o, expires: expires, slot: m.next}
	m.next = (m.next + 1) % len(m.ring)
}

func (m *localMap) get(id string, now time.Time) (Owner, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[id]
	if !ok {
		return Owner{}, false
	}
	if !now.Before(e.expires) {
		delete(m.entries, id)
		return Owner{}, false
	}
	return e.owner, true
}

func (m *localMap) delete(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.entries, id)
}
