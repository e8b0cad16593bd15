package harness_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/harness"
	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/servers"
)

// TestQcow2SurvivesKill9 kills nbdlab serve with SIGKILL in the middle of
// a write storm on a qcow2 image, 20 times. After each kill qemu-img check
// must find no corruption (leaked clusters are allowed), and every write
// acknowledged with FUA, or followed by an acknowledged FLUSH, in this
// round or any before, must read back.
func TestQcow2SurvivesKill9(t *testing.T) {
	testenv.Need(t, "qemu-img")
	const (
		rounds = 20
		block  = 4096
		size   = 32 << 20
	)
	dir := t.TempDir()
	base, _ := randomFile(t, size)
	harness.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-f", "raw", base, filepath.Join(dir, "base.qcow2"))
	img := filepath.Join(dir, "img.qcow2")
	harness.Run(t, "qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "base.qcow2", "-F", "qcow2", img)
	durable := map[int64][]byte{} // block offset: what it must hold
	r := rand.New(rand.NewPCG(9, 9))
	for round := 0; round < rounds; round++ {
		s, err := servers.StartServe(context.Background(), testenv.Nbdlab(t), "--listen", "127.0.0.1:0", "d=qcow2:"+img)
		if err != nil {
			t.Fatalf("round %d: start: %v", round, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c, err := nbd.Dial(ctx, s.TCP, &nbd.ClientConfig{Export: "d"})
		if err != nil {
			cancel()
			s.Kill()
			t.Fatalf("round %d: dial: %v", round, err)
		}
		// Every durable block reads back after the last kill.
		for off, want := range durable {
			got := make([]byte, len(want))
			if _, err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("round %d: the block at %d, durable before a kill, reads back different (%v)", round, off, err)
			}
		}
		// Four writers, each in a quarter of its own: FUA writes, and
		// plain writes made durable by a FLUSH, until the kill.
		var mu sync.Mutex
		var wg sync.WaitGroup
		killAt := time.Duration(50+r.IntN(400)) * time.Millisecond
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				quarter := int64(size / 4)
				unflushed := map[int64][]byte{}
				for i := 0; ; i++ {
					n := int64(block * (1 + r.IntN(20)))
					off := int64(w)*quarter + r.Int64N((quarter-n)/block)*block
					p := bytes.Repeat([]byte{byte(round*31 + w*7 + i)}, int(n))
					mu.Lock()
					for b := off; b < off+n; b += block {
						delete(durable, b) // unknown until acknowledged durable
						delete(unflushed, b)
					}
					mu.Unlock()
					fua := r.IntN(2) == 0
					var flags nbd.CmdFlags
					if fua {
						flags = nbd.CmdFlagFUA
					}
					if _, err := c.Do(ctx, nbd.Request{Cmd: nbd.CmdWrite, Flags: flags, Offset: uint64(off), Length: uint32(n), Data: p}, nil); err != nil {
						return
					}
					mu.Lock()
					for b := off; b < off+n; b += block {
						if fua {
							durable[b] = p[:block]
						} else {
							unflushed[b] = p[:block]
						}
					}
					mu.Unlock()
					if i%5 == 4 {
						if err := c.Flush(ctx); err != nil {
							return
						}
						mu.Lock()
						for b, d := range unflushed {
							durable[b] = d
						}
						mu.Unlock()
						clear(unflushed)
					}
				}
			}(w)
		}
		time.Sleep(killAt)
		s.Kill()
		wg.Wait()
		cancel()
		c.Close()
		out, err := exec.Command("qemu-img", "check", img).CombinedOutput()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 { // 3: leaks only
				t.Fatalf("round %d: qemu-img check after kill -9: %v\n%s", round, err, out)
			}
		}
		t.Logf("round %d: killed after %v, %d blocks durable; %s", round, killAt, len(durable), firstLineOf(out))
	}
}

func firstLineOf(b []byte) string {
	s, _, _ := bytes.Cut(bytes.TrimSpace(b), []byte("\n"))
	return string(s)
}
