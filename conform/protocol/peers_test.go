package protocol_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/conform/protocol"
	"github.com/nbdlab/nbdlab/internal/testenv"
)

// The matrix against the real peers: nbdlab serve passes every check
// (a patience above its 10s handshake timeout), and the reports are
// written.
func TestIntegrationPeers(t *testing.T) {
	testenv.Need(t, "nbdkit", "qemu-nbd", "nbd-server")
	dir := t.TempDir()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	err := protocol.RunPeers(ctx, protocol.PeersOptions{Out: &out, Dir: dir, Patience: 12 * time.Second, Nbdlab: testenv.Nbdlab(t)})
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"report.json", "report.md", "junit.xml"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, server := range []string{"nbdlab", "nbdkit", "qemu-nbd", "nbd-server"} {
			if !strings.Contains(string(b), server) {
				t.Errorf("%s does not name %s", name, server)
			}
		}
	}
}
