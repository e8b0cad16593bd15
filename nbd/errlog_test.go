package nbd_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

// full is a backend whose disk is full: every write fails with ENOSPC.
type full struct{ *nbd.Mem }

func (full) WriteAt([]byte, int64) (int, error) { return 0, syscall.ENOSPC }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// A full backing store leaves a trace at the server: the client gets
// ENOSPC, the server logs the export, offset and length, and the
// disconnect line counts the errors and is a warning.
func TestServerLogsBackendErrors(t *testing.T) {
	var logs syncBuffer
	srv := &nbd.Server{
		Exports: []*nbd.Export{{Name: "full", Backend: full{nbd.NewMem(1 << 20)}}},
		Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
	}
	const writes = 40
	// Pair's cleanup, at the subtest's end, waits for the session to end
	// and log its disconnect line.
	t.Run("writes", func(t *testing.T) {
		c := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "full"})
		for i := range writes {
			if _, err := c.WriteAt(make([]byte, 4096), int64(i)*4096); !errors.Is(err, nbd.ENOSPC) {
				t.Fatalf("write %d: %v, want ENOSPC", i, err)
			}
		}
	})
	out := logs.b.String()
	lines := strings.Count(out, "backend error")
	if lines < 1 || lines > 11 {
		t.Errorf("%d backend error lines for %d failed writes, want 1 to 11", lines, writes)
	}
	for _, want := range []string{"export=full", "cmd=NBD_CMD_WRITE", "offset=0", "length=4096", "errno=ENOSPC", "no space left on device"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, `level=WARN msg="client disconnected"`) || !strings.Contains(out, `errors="ENOSPC=40"`) {
		t.Errorf("disconnect line does not warn with the error count:\n%s", out)
	}
}
