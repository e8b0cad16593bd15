package kernelsuite

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

// volatile is a backend with a write cache, as a disk has: writes land in
// the cache, Sync writes the cache back to the stable store, and a crash
// loses what the cache held. Its faults make the deliberately wrong
// servers the durability checker must catch.
type volatile struct {
	mu      sync.Mutex
	stable  *nbd.Mem
	pending []write
	// ignoresFlush acknowledges Sync (NBD_CMD_FLUSH, and the Sync after a
	// FUA write) without writing the cache back.
	ignoresFlush bool
	// dropsFUA takes FUA writes into the cache like any other.
	dropsFUA bool
}

type write struct {
	off  int64
	data []byte
}

func (v *volatile) Size() int64 { return v.stable.Size() }

func (v *volatile) ReadAt(p []byte, off int64) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, err := v.stable.ReadAt(p, off); err != nil {
		return 0, err
	}
	for _, w := range v.pending {
		lo, hi := max(off, w.off), min(off+int64(len(p)), w.off+int64(len(w.data)))
		if lo < hi {
			copy(p[lo-off:hi-off], w.data[lo-w.off:hi-w.off])
		}
	}
	return len(p), nil
}

func (v *volatile) WriteAt(p []byte, off int64) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pending = append(v.pending, write{off, append([]byte(nil), p...)})
	return len(p), nil
}

// WriteAtFUA writes p to the stable store, unless the backend drops FUA.
func (v *volatile) WriteAtFUA(p []byte, off int64) (int, error) {
	if v.dropsFUA {
		return v.WriteAt(p, off)
	}
	if _, err := v.WriteAt(p, off); err != nil {
		return 0, err
	}
	return len(p), v.Sync()
}

func (v *volatile) Sync() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ignoresFlush {
		return nil
	}
	for _, w := range v.pending {
		if _, err := v.stable.WriteAt(w.data, w.off); err != nil {
			return err
		}
	}
	v.pending = nil
	return nil
}

// crash loses the cache, as a server killed or a machine powered off does.
func (v *volatile) crash() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pending = nil
	return nil
}

// durableDev writes through an NBD client as the kernel does for an
// O_DSYNC write: with FUA, or as a write followed by a flush.
type durableDev struct {
	c   *nbd.Client
	fua bool
}

func (d durableDev) ReadAt(p []byte, off int64) (int, error) { return d.c.ReadAt(p, off) }

func (d durableDev) WriteAt(p []byte, off int64) (int, error) {
	ctx := context.Background()
	if d.fua {
		_, err := d.c.Do(ctx, nbd.Request{Cmd: nbd.CmdWrite, Flags: nbd.CmdFlagFUA, Offset: uint64(off), Length: uint32(len(p)), Data: p}, nil)
		return len(p), err
	}
	if _, err := d.c.WriteAt(p, off); err != nil {
		return 0, err
	}
	return len(p), d.c.Flush(ctx)
}

// TestDurabilityCheckerCatchesWrongServers shows the checker of
// faults/persist-restart able to fail: servers that acknowledge a FLUSH
// or a FUA write they did not make durable lose blocks across the crash,
// and the checker names them; an honest server with the same cache
// passes, and each wrong one passes where its fault is not exercised.
func TestDurabilityCheckerCatchesWrongServers(t *testing.T) {
	for _, tt := range []struct {
		name                   string
		ignoresFlush, dropsFUA bool
		fua                    bool
		fails                  bool
	}{
		{name: "honest/flush"},
		{name: "honest/fua", fua: true},
		{name: "ignores-flush/flush", ignoresFlush: true, fails: true},
		{name: "ignores-flush/fua", ignoresFlush: true, fua: true, fails: true}, // the server syncs after a FUA write
		{name: "drops-fua/fua", dropsFUA: true, fua: true, fails: true},
		{name: "drops-fua/flush", dropsFUA: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := &volatile{stable: nbd.NewMem(4 << 20), ignoresFlush: tt.ignoresFlush, dropsFUA: tt.dropsFUA}
			srv := &nbd.Server{Exports: []*nbd.Export{{Name: "d", Backend: b}},
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			c := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "d"})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := durableAcrossRestart(ctx, durableDev{c, tt.fua}, "test", b.crash)
			switch {
			case tt.fails && (err == nil || !strings.Contains(err.Error(), "are not there after the restart")):
				t.Errorf("a wrong server passes: err = %v", err)
			case !tt.fails && err != nil:
				t.Errorf("an honest answer fails: %v", err)
			}
			t.Log(err)
		})
	}
}
