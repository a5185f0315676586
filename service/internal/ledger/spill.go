package ledger

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// The spill is where rows go that Postgres has not taken: a directory of
// append-only segment files, ledger-<seq>.jsonl, one JSON row per line in
// the order written. Rows are appended to the newest (active) segment;
// replay takes the oldest closed segment, and a segment is deleted only
// once all of its rows are committed. A lock file keeps a second process
// out of the directory.
//
// Appends are buffered and fsynced by the writer every fsync_interval, so a
// crash loses at most the rows appended since the last fsync; a row cut in
// half by the crash is the segment's last line, and is counted as dropped
// when the segment is replayed.
type spill struct {
	dir        string
	lock       *os.File
	maxSegment int64

	mu          sync.Mutex
	seq         uint64 // the active segment's number
	active      *os.File
	w           *bufio.Writer
	activeRows  int
	activeBytes int64
	dirty       bool // appended since the last fsync
	closed      []segment
	buf         bytes.Buffer

	bytes atomic.Int64 // on disk, in every segment
}

// segment is a closed spill file, immutable until it is removed.
type segment struct {
	seq  uint64
	path string
	size int64
}

const (
	segmentPrefix = "ledger-"
	segmentSuffix = ".jsonl"
)

// openSpill opens dir (creating it), takes its lock, and lists the segments
// a previous run left, oldest first, to be replayed before anything newer.
func openSpill(dir string, maxSegment int64) (*spill, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("spill directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spill directory: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("spill directory %s is in use by another process (%w); give each gateway process its own ledger.spill_dir", dir, err)
	}
	s := &spill{dir: dir, lock: lock, maxSegment: maxSegment}
	entries, err := os.ReadDir(dir)
	if err != nil {
		s.unlock()
		return nil, fmt.Errorf("spill directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, segmentPrefix) || !strings.HasSuffix(name, segmentSuffix) || !e.Type().IsRegular() {
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, segmentPrefix), segmentSuffix), 10, 64)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			s.unlock()
			return nil, fmt.Errorf("spill directory: %w", err)
		}
		p := filepath.Join(dir, name)
		if info.Size() == 0 {
			_ = os.Remove(p)
			continue
		}
		s.closed = append(s.closed, segment{seq: seq, path: p, size: info.Size()})
		s.bytes.Add(info.Size())
		s.seq = max(s.seq, seq)
	}
	sort.Slice(s.closed, func(i, j int) bool { return s.closed[i].seq < s.closed[j].seq })
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.openActiveLocked(); err != nil {
		s.unlock()
		return nil, err
	}
	return s, nil
}

func (s *spill) unlock() {
	_ = syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN)
	_ = s.lock.Close()
}

func (s *spill) segmentPath(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%s%020d%s", segmentPrefix, seq, segmentSuffix))
}

func (s *spill) openActiveLocked() error {
	s.seq++
	f, err := os.OpenFile(s.segmentPath(s.seq), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("spill file: %w", err)
	}
	s.active, s.activeRows, s.activeBytes = f, 0, 0
	if s.w == nil {
		s.w = bufio.NewWriterSize(f, 64<<10)
	} else {
		s.w.Reset(f)
	}
	return s.syncDir()
}

// syncDir makes a created or removed segment's name durable.
func (s *spill) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Append adds rows to the active segment and returns how many it took.
func (s *spill) Append(rows []Row) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active == nil {
		return 0, errors.New("spill is closed")
	}
	for i := range rows {
		s.buf.Reset()
		enc := json.NewEncoder(&s.buf) // Encode ends the line with '\n'
		if err := enc.Encode(&rows[i]); err != nil {
			return i, fmt.Errorf("encode row: %w", err)
		}
		n, err := s.w.Write(s.buf.Bytes())
		s.activeBytes += int64(n)
		s.bytes.Add(int64(n))
		s.dirty = true
		if err != nil {
			return i, fmt.Errorf("spill file: %w", err)
		}
		s.activeRows++
		if s.activeBytes >= s.maxSegment {
			if err := s.rotateLocked(); err != nil {
				return i + 1, err
			}
		}
	}
	return len(rows), nil
}

// Sync writes the buffered rows out and fsyncs them.
func (s *spill) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.syncLocked()
}

func (s *spill) syncLocked() error {
	if !s.dirty || s.active == nil {
		return nil
	}
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("spill file: %w", err)
	}
	if err := s.active.Sync(); err != nil {
		return fmt.Errorf("spill file fsync: %w", err)
	}
	s.dirty = false
	return nil
}

// rotateLocked closes the active segment, when it holds rows, and starts a
// new one.
func (s *spill) rotateLocked() error {
	if s.activeRows == 0 {
		return nil
	}
	if err := s.syncLocked(); err != nil {
		return err
	}
	if err := s.active.Close(); err != nil {
		return fmt.Errorf("spill file: %w", err)
	}
	s.closed = append(s.closed, segment{seq: s.seq, path: s.segmentPath(s.seq), size: s.activeBytes})
	s.active = nil
	return s.openActiveLocked()
}

// Empty reports whether no spilled row waits for replay.
func (s *spill) Empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.closed) == 0 && s.activeRows == 0
}

// Next is the oldest segment to replay, closing the active one when no
// closed segment is left; nil when there is nothing to replay.
func (s *spill) Next() (*segment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.closed) == 0 {
		if err := s.rotateLocked(); err != nil {
			return nil, err
		}
	}
	if len(s.closed) == 0 {
		return nil, nil
	}
	seg := s.closed[0]
	return &seg, nil
}

// Read returns a closed segment's rows in order, and how many lines could
// not be read back (a row cut by a crash, or a damaged file).
func (s *spill) Read(seg *segment) (rows []Row, bad int, err error) {
	data, err := os.ReadFile(seg.path)
	if err != nil {
		return nil, 0, fmt.Errorf("spill file: %w", err)
	}
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r Row
		if err := json.Unmarshal(line, &r); err != nil || r.ID == "" {
			bad++
			continue
		}
		rows = append(rows, r)
	}
	return rows, bad, nil
}

// Remove deletes a replayed segment, the oldest.
func (s *spill) Remove(seg *segment) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spill file: %w", err)
	}
	for i := range s.closed {
		if s.closed[i].seq == seg.seq {
			s.closed = append(s.closed[:i], s.closed[i+1:]...)
			break
		}
	}
	s.bytes.Add(-seg.size)
	return s.syncDir()
}

// SetAside renames a segment that cannot be read so it no longer blocks
// replay; its rows stay on disk for an operator.
func (s *spill) SetAside(seg *segment) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.closed {
		if s.closed[i].seq == seg.seq {
			s.closed = append(s.closed[:i], s.closed[i+1:]...)
			break
		}
	}
	s.bytes.Add(-seg.size)
	return os.Rename(seg.path, seg.path+".unreadable")
}

// Bytes is the size of every segment not yet replayed.
func (s *spill) Bytes() int64 { return s.bytes.Load() }

// Close fsyncs the active segment (removing it when empty) and lets go of
// the directory's lock.
func (s *spill) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active == nil {
		return nil
	}
	err := s.syncLocked()
	if cerr := s.active.Close(); err == nil {
		err = cerr
	}
	if s.activeRows == 0 {
		_ = os.Remove(s.segmentPath(s.seq))
	}
	s.active = nil
	s.unlock()
	return err
}
