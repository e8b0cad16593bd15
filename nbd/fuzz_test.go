package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"testing"
)

// boundedMem fails the test on any access outside the export.
type boundedMem struct {
	*Mem
	t *testing.T
}

func (b boundedMem) check(off, n int64) {
	if off < 0 || n < 0 || off+n > b.Size() {
		b.t.Errorf("backend access at %d+%d outside the %d-byte export", off, n, b.Size())
	}
}
func (b boundedMem) ReadAt(p []byte, off int64) (int, error) {
	b.check(off, int64(len(p)))
	return b.Mem.ReadAt(p, off)
}
func (b boundedMem) WriteAt(p []byte, off int64) (int, error) {
	b.check(off, int64(len(p)))
	return b.Mem.WriteAt(p, off)
}
func (b boundedMem) Zero(off, n int64, f ZeroFlags) error {
	b.check(off, n)
	return b.Mem.Zero(off, n, f)
}
func (b boundedMem) Trim(off, n int64) error { b.check(off, n); return b.Mem.Trim(off, n) }
func (b boundedMem) Extents(off, n int64) ([]Extent, error) {
	b.check(off, n)
	return b.Mem.Extents(off, n)
}

func fuzzServer(t *testing.T) *Server {
	return &Server{
		Exports: []*Export{
			{Name: "a", Backend: boundedMem{NewMem(1 << 20), t}},
			{Name: "ro", Backend: boundedMem{NewMem(4096), t}, ReadOnly: true},
			// Plain memory: large writes take the path straight into its chunks.
			{Name: "m", Backend: NewMem(1 << 20)},
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

type stream struct {
	io.Reader
	io.Writer
}

func opt(o Option, data []byte) []byte {
	return append(appendOptionHeader(nil, optionHeader{opt: o, length: uint32(len(data))}), data...)
}

func req(cmd Cmd, flags CmdFlags, off uint64, n uint32, payload []byte) []byte {
	return append(appendRequest(nil, request{flags: flags, cmd: cmd, cookie: 7, off: off, length: n}), payload...)
}

func nameQuery(name string, extra []byte) []byte {
	return append(appendString(nil, name), extra...)
}

// FuzzHandshake feeds arbitrary client bytes through the handshake and,
// when one completes, through the transmission phase.
func FuzzHandshake(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, uint32(FlagCFixedNewstyle|FlagCNoZeroes))
	meta := binary.BigEndian.AppendUint32(nameQuery("a", nil), 1)
	meta = appendString(meta, MetaContextBaseAllocation)
	seeds := [][]byte{
		append(flags, opt(OptExportName, []byte("a"))...),
		append(flags, opt(OptList, nil)...),
		append(append(append(flags, opt(OptStructuredReply, nil)...), opt(OptSetMetaContext, meta)...),
			opt(OptGo, nameQuery("a", []byte{0, 1, 0, 3}))...),
		append(flags, opt(OptInfo, nameQuery("zz", []byte{0, 0}))...),
		append(flags, opt(OptStartTLS, nil)...),
		append(flags, opt(OptAbort, nil)...),
		append(flags, opt(99, []byte("?"))...),
		append(append(flags, opt(OptGo, nameQuery("a", []byte{0, 0}))...), req(CmdRead, 0, 0, 512, nil)...),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		srv := fuzzServer(t)
		s := newSession(srv, stream{bytes.NewReader(data), io.Discard}, nil)
		if err := s.negotiate(context.Background()); err != nil {
			return
		}
		newTransmission(s, srv.logger()).run()
	})
}

// FuzzTransmission feeds arbitrary requests to a session that has
// negotiated; the first byte picks structured replies and the export.
func FuzzTransmission(f *testing.F) {
	f.Add([]byte{3}, req(CmdWrite, CmdFlagFUA, 100, 4, []byte("abcd")))
	f.Add([]byte{3}, req(CmdBlockStatus, CmdFlagReqOne, 0, 1<<20, nil))
	f.Add([]byte{1}, req(CmdRead, CmdFlagDF, 1<<20-1, 1, nil))
	f.Add([]byte{0}, req(CmdWriteZeroes, CmdFlagNoHole|CmdFlagFastZero, 4000, 9000, nil))
	f.Add([]byte{4}, req(CmdTrim, 0, 0, 4096, nil))
	f.Add([]byte{0}, append(req(CmdFlush, 0, 0, 0, nil), req(CmdDisc, 0, 0, 0, nil)...))
	f.Add([]byte{0}, req(CmdWrite, 0, 0, MaxPayload+1, nil))
	// Cut short: a payload of 64 KiB or more slows the fuzzer to a crawl.
	f.Add([]byte{8}, req(CmdWrite, 0, 1000, 200<<10, bytes.Repeat([]byte{1}, 2000)))
	f.Add([]byte{8}, req(CmdWrite, 0, 1<<20-70000, 70000, bytes.Repeat([]byte{1}, 3000)))
	f.Fuzz(func(t *testing.T, mode []byte, data []byte) {
		srv := fuzzServer(t)
		s := newSession(srv, stream{bytes.NewReader(data), io.Discard}, nil)
		var m byte
		if len(mode) > 0 {
			m = mode[0]
		}
		s.structured = m&1 != 0
		s.metaAlloc = m&2 != 0
		s.export = srv.Exports[int(m>>2)%len(srv.Exports)]
		newTransmission(s, srv.logger()).run()
	})
}
