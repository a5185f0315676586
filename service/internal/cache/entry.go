package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Entry is a cached upstream response.
type Entry struct {
	// Body is the response body, byte for byte as the upstream sent it.
	Body []byte
	// ContentType is the upstream's Content-Type header.
	ContentType string
	// Upstream names the upstream that produced the answer (X-Relaygate-Upstream).
	Upstream string
	// StoredAt is when the answer was cached, kept to the millisecond.
	StoredAt time.Time
}

// entryFormat is the first byte of every stored value. A reader meeting another
// value treats the entry as a miss, so the format can change without a flush.
const entryFormat byte = 1

// encodeEntry lays an Entry out as: format byte, uvarint-length-prefixed
// content type and upstream, varint StoredAt in Unix milliseconds, then the
// body as the rest. A binary layout keeps bodies exact and costs a few bytes
// over the body itself, where JSON would base64 it (a third more).
func encodeEntry(e Entry) []byte {
	buf := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(e.ContentType)+len(e.Upstream)+binary.MaxVarintLen64+len(e.Body))
	buf = append(buf, entryFormat)
	buf = binary.AppendUvarint(buf, uint64(len(e.ContentType)))
	buf = append(buf, e.ContentType...)
	buf = binary.AppendUvarint(buf, uint64(len(e.Upstream)))
	buf = append(buf, e.Upstream...)
	buf = binary.AppendVarint(buf, e.StoredAt.UnixMilli())
	return append(buf, e.Body...)
}

var errTruncated = errors.New("truncated")

func decodeEntry(raw []byte) (Entry, error) {
	if len(raw) == 0 || raw[0] != entryFormat {
		return Entry{}, fmt.Errorf("decode cache entry: unknown format")
	}
	rest := raw[1:]
	readString := func() (string, error) {
		n, size := binary.Uvarint(rest)
		if size <= 0 || n > uint64(len(rest)-size) {
			return "", errTruncated
		}
		s := string(rest[size : size+int(n)])
		rest = rest[size+int(n):]
		return s, nil
	}
	var e Entry
	var err error
	if e.ContentType, err = readString(); err != nil {
		return Entry{}, fmt.Errorf("decode cache entry content type: %w", err)
	}
	if e.Upstream, err = readString(); err != nil {
		return Entry{}, fmt.Errorf("decode cache entry upstream: %w", err)
	}
	ms, size := binary.Varint(rest)
	if size <= 0 {
		return Entry{}, fmt.Errorf("decode cache entry time: %w", errTruncated)
	}
	e.StoredAt = time.UnixMilli(ms)
	e.Body = rest[size:]
	return e, nil
}
