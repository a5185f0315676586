package cache

import (
	"bytes"
	"testing"
	"time"
)

func TestEntryEncodingRoundTrip(t *testing.T) {
	at := time.UnixMilli(1_750_000_000_123)
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	tests := []struct {
		name string
		e    Entry
	}{
		{"chat completion", Entry{Body: []byte(`{"id":"chatcmpl-1","object":"chat.completion"}`), ContentType: "application/json", Upstream: "holysheep", StoredAt: at}},
		{"empty everything", Entry{StoredAt: time.UnixMilli(0)}},
		{"every byte value", Entry{Body: binary, ContentType: "application/octet-stream", Upstream: "u", StoredAt: at}},
		{"unicode and trailing whitespace", Entry{Body: []byte("{\"c\":\"héllo 👋\"}\n\n  "), ContentType: "application/json; charset=utf-8", Upstream: "ünïcode", StoredAt: at}},
		{"time before 1970", Entry{Body: []byte("x"), StoredAt: time.UnixMilli(-5000)}},
		{"long fields", Entry{Body: bytes.Repeat([]byte("b"), 1<<16), ContentType: string(bytes.Repeat([]byte("c"), 300)), Upstream: "u", StoredAt: at}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeEntry(encodeEntry(tt.e))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !bytes.Equal(got.Body, tt.e.Body) || got.ContentType != tt.e.ContentType ||
				got.Upstream != tt.e.Upstream || !got.StoredAt.Equal(tt.e.StoredAt) {
				t.Fatalf("round trip changed the entry:\n got %+v\nwant %+v", got, tt.e)
			}
		})
	}
}

func TestDecodeEntryRejectsDamage(t *testing.T) {
	good := encodeEntry(Entry{Body: []byte("body"), ContentType: "application/json", Upstream: "up", StoredAt: time.UnixMilli(1)})
	tests := []struct {
		name string
		raw  []byte
	}{
		{"empty", nil},
		{"other format", append([]byte{2}, good[1:]...)},
		{"plain JSON from elsewhere", []byte(`{"id":"x"}`)},
		{"cut inside content type", good[:5]},
		{"length beyond the value", []byte{entryFormat, 0x7f, 'a'}},
		{"cut before the time", good[:1+1+len("application/json")+1+len("up")]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if e, err := decodeEntry(tt.raw); err == nil {
				t.Fatalf("decoded damaged value as %+v", e)
			}
		})
	}
}
