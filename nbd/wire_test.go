package nbd

import (
	"bytes"
	"errors"
	"testing"
)

// header is one fixed header of the codec: parse it from the front of b
// and append it again.
type header struct {
	name      string
	n         int
	reencode  func(b []byte) ([]byte, error)
	wantMagic []byte // what a valid header starts with
}

func wireHeaders() []header {
	return []header{
		{"greeting", greetingLen, func(b []byte) ([]byte, error) {
			f, err := parseGreeting(b)
			return appendGreeting(nil, f), err
		}, appendGreeting(nil, 0)[:16]},
		{"option", optionHeaderLen, func(b []byte) ([]byte, error) {
			h, err := parseOptionHeader(b)
			return appendOptionHeader(nil, h), err
		}, appendOptionHeader(nil, optionHeader{})[:8]},
		{"option reply", optionReplyHeaderLen, func(b []byte) ([]byte, error) {
			h, err := parseOptionReplyHeader(b)
			return appendOptionReplyHeader(nil, h), err
		}, appendOptionReplyHeader(nil, optionReplyHeader{})[:8]},
		{"request", requestHeaderLen, func(b []byte) ([]byte, error) {
			r, err := parseRequest(b)
			return appendRequest(nil, r), err
		}, appendRequest(nil, request{})[:4]},
		{"simple reply", simpleReplyLen, func(b []byte) ([]byte, error) {
			r, err := parseSimpleReply(b)
			return appendSimpleReply(nil, r), err
		}, appendSimpleReply(nil, simpleReply{})[:4]},
		{"chunk", chunkHeaderLen, func(b []byte) ([]byte, error) {
			h, err := parseChunkHeader(b)
			return appendChunkHeader(nil, h), err
		}, appendChunkHeader(nil, chunkHeader{})[:4]},
	}
}

// Each header is as long as its constant says, and parses back to itself.
func TestWireRoundTrip(t *testing.T) {
	for _, h := range wireHeaders() {
		t.Run(h.name, func(t *testing.T) {
			b := append(append([]byte{}, h.wantMagic...), bytes.Repeat([]byte{0xa5}, h.n-len(h.wantMagic))...)
			got, err := h.reencode(b)
			if err != nil {
				t.Fatalf("parse a valid header: %v", err)
			}
			if !bytes.Equal(got, b) {
				t.Fatalf("round trip\n got %x\nwant %x", got, b)
			}
			b[0] ^= 0xff
			var pe *ProtocolError
			if _, err := h.reencode(b); !errors.As(err, &pe) {
				t.Fatalf("a bad magic gives %v, want a *ProtocolError", err)
			}
		})
	}
}

func TestReplyLen(t *testing.T) {
	for _, tt := range []struct {
		b    []byte
		want int
	}{
		{appendSimpleReply(nil, simpleReply{}), simpleReplyLen},
		{appendChunkHeader(nil, chunkHeader{}), chunkHeaderLen},
		{[]byte{1, 2, 3, 4}, 0},
	} {
		n, err := replyLen(tt.b)
		if n != tt.want || (err != nil) != (tt.want == 0) {
			t.Errorf("replyLen(%x) = %d, %v; want %d", tt.b[:4], n, err, tt.want)
		}
	}
}

// FuzzWire parses every header from arbitrary bytes: whatever parses must
// append back to the same bytes, and nothing panics.
func FuzzWire(f *testing.F) {
	for _, h := range wireHeaders() {
		f.Add(append(append([]byte{}, h.wantMagic...), make([]byte, 24)...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, h := range wireHeaders() {
			if len(data) < h.n {
				continue
			}
			got, err := h.reencode(data[:h.n])
			if err == nil && !bytes.Equal(got, data[:h.n]) {
				t.Fatalf("%s: %x re-encodes as %x", h.name, data[:h.n], got)
			}
		}
		if s, rest, ok := parseString(data); ok {
			if again := appendString(nil, s); !bytes.Equal(append(again, rest...), data) {
				t.Fatalf("string %q does not re-encode to its input", s)
			}
		}
	})
}
