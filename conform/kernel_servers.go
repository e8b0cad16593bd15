package conform

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nbdlab/nbdlab/harness"
	"github.com/nbdlab/nbdlab/nbd"
)

// kernelPort is where every server of the kernel suite listens, on the
// server side of its namespace's veth pair.
const kernelPort = 10809

// kernelExportSize is the export every server offers the kernel.
const kernelExportSize = 256 << 20

// KernelServer is a server the kernel suite runs against: argv starts it
// in the foreground listening on ip:port, exporting "d" from img (a
// sparse file of kernelExportSize) or from memory.
type KernelServer struct {
	Name string
	What string
	argv func(nbdlab, dir, ip, img string) []string
}

// KernelServers returns the servers of the kernel suite.
func KernelServers() []KernelServer {
	port := strconv.Itoa(kernelPort)
	size := strconv.Itoa(kernelExportSize)
	return []KernelServer{
		{"nbdlab-mem", "nbdlab serve d=mem:256M", func(bin, _, ip, _ string) []string {
			return []string{bin, "serve", "--listen", net.JoinHostPort(ip, port), "d=mem:" + size}
		}},
		{"nbdlab-file", "nbdlab serve d=file:IMG", func(bin, _, ip, img string) []string {
			return []string{bin, "serve", "--listen", net.JoinHostPort(ip, port), "d=file:" + img}
		}},
		{"nbd-server", "nbd-server (daemon) with flush, fua, trim", func(_, dir, ip, img string) []string {
			conf, pid := filepath.Join(dir, "nbd-server.conf"), filepath.Join(dir, "nbd-server.pid")
			os.WriteFile(conf, []byte(fmt.Sprintf("[generic]\n    listenaddr = %s\n    port = %s\n[d]\n    exportname = %s\n    flush = true\n    fua = true\n    trim = true\n    multifile = false\n", ip, port, img)), 0o644)
			script := `nbd-server -C "$1" -p "$2" || exit 1
trap 'kill $(cat "$2"); exit 0' TERM INT
while kill -0 $(cat "$2") 2>/dev/null; do sleep 1; done
exit 1`
			return []string{"sh", "-c", script, "nbd-server", conf, pid}
		}},
		{"nbdkit-memory", "nbdkit memory 256M", func(_, _, ip, _ string) []string {
			return []string{"nbdkit", "-f", "-i", ip, "-p", port, "memory", size}
		}},
		{"nbdkit-file", "nbdkit file IMG", func(_, _, ip, img string) []string {
			return []string{"nbdkit", "-f", "-i", ip, "-p", port, "file", img}
		}},
		{"qemu-nbd", "qemu-nbd -f raw --shared=32 IMG", func(_, _, ip, img string) []string {
			return []string{"qemu-nbd", "-t", "--shared=32", "-f", "raw", "-x", "d", "-b", ip, "-p", port, "--cache=none", "--aio=threads", img}
		}},
	}
}

// runningServer is a KernelServer started in a namespace.
type runningServer struct {
	spec   KernelServer
	net    *testNet
	dir    string
	img    string
	nbdlab string
	proc   *harness.Proc
	argv   []string
	Flags  nbd.TransmissionFlags
}

func (s *runningServer) addr() nbd.Addr {
	return nbd.Addr{Network: "tcp", Address: net.JoinHostPort(s.net.ServerIP.String(), strconv.Itoa(kernelPort))}
}

// start starts the server in its namespace and reads what it advertises.
func (s *runningServer) start(ctx context.Context) error {
	s.argv = append([]string{"ip", "netns", "exec", s.net.Name}, s.spec.argv(s.nbdlab, s.dir, s.net.ServerIP.String(), s.img)...)
	p, err := harness.StartListening(ctx, s.addr(), 30*time.Second, s.argv[0], s.argv[1:]...)
	if err != nil {
		return fmt.Errorf("conform: start %s: %w", s.spec.Name, err)
	}
	s.proc = p
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := nbd.Dial(cctx, s.addr().Address, &nbd.ClientConfig{Export: "d"})
	if err != nil {
		s.stop()
		return fmt.Errorf("conform: %s: handshake: %w", s.spec.Name, err)
	}
	s.Flags = c.Info.Flags
	c.Close()
	return nil
}

func (s *runningServer) stop() {
	if s.proc != nil {
		s.proc.Stop(10 * time.Second)
		s.proc = nil
	}
}

// signal sends sig to the server process (ip netns exec has exec'd it,
// or the sh holding nbd-server's place, whose daemon is its child).
func (s *runningServer) signal(sig os.Signal) error {
	if s.proc == nil {
		return fmt.Errorf("conform: %s is not running", s.spec.Name)
	}
	return s.proc.Cmd.Process.Signal(sig)
}
