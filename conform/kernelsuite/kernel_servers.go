package kernelsuite

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/labnet"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/servers"
)

// kernelPort is where every server of the kernel suite listens, on the
// server side of its namespace's veth pair.
const kernelPort = 10809

// kernelExportSize is the export every server offers the kernel.
const kernelExportSize = 256 << 20

// Server is a server the kernel suite runs against.
type Server = servers.Spec

// Servers returns the servers of the kernel suite.
func Servers() []Server { return servers.TCP() }

// recordFile is where nbdlab serve records the requests it reads.
const recordFile = "requests.jsonl"

// runningServer is a Server started in a namespace.
type runningServer struct {
	spec   Server
	net    *labnet.Pair
	dir    string
	img    string
	nbdlab string
	proc   *servers.Proc
	argv   []string
	// ctx is the suite's: a server outlives the case that restarts it.
	ctx   context.Context
	Flags nbd.TransmissionFlags
}

func (s *runningServer) addr() nbd.Addr {
	return nbd.Addr{Network: "tcp", Address: net.JoinHostPort(s.net.ServerIP.String(), strconv.Itoa(kernelPort))}
}

// start starts the server in its namespace and reads what it advertises.
func (s *runningServer) start() error {
	ctx := s.ctx
	argv, err := s.spec.Argv(servers.Args{Nbdlab: s.nbdlab, Dir: s.dir, IP: s.net.ServerIP.String(),
		Port: kernelPort, Img: s.img, Size: kernelExportSize, Record: filepath.Join(s.dir, recordFile)})
	if err != nil {
		return fmt.Errorf("conform: start %s: %w", s.spec.Name, err)
	}
	s.argv = append([]string{"ip", "netns", "exec", s.net.Name}, argv...)
	p, err := servers.StartListening(ctx, s.addr(), 30*time.Second, s.argv[0], s.argv[1:]...)
	if err != nil {
		return fmt.Errorf("conform: start %s: %w", s.spec.Name, err)
	}
	s.proc = p
	// Under TCG some servers take seconds per connection (nbd-server).
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
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
// or the sh holding nbd-server's place, whose daemon is its child) and to
// every process under it: a forking server (nbd-server) serves each
// connection from a child.
func (s *runningServer) signal(sig syscall.Signal) error {
	if s.proc == nil {
		return fmt.Errorf("conform: %s is not running", s.spec.Name)
	}
	for _, pid := range s.pids() {
		syscall.Kill(pid, sig)
	}
	return nil
}

// pids lists the server's processes: the one started and every process
// under it, and a daemon that left it (nbd-server), found by the pid file
// it wrote into the server's directory, with the processes under that.
func (s *runningServer) pids() []int {
	pids := procfs.Tree(s.proc.Cmd.Process.Pid)
	files, _ := filepath.Glob(filepath.Join(s.dir, "*.pid"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if pid, err2 := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && err2 == nil && procfs.Alive(pid) {
			pids = append(pids, procfs.Tree(pid)...)
		}
	}
	return pids
}

// stopped reports whether the server and every process under it are
// stopped.
func (s *runningServer) stopped() bool {
	for _, pid := range s.pids() {
		if !procfs.Stopped(pid) {
			return false
		}
	}
	return true
}

// kill kills the server and every process under it, as a crash would.
func (s *runningServer) kill() {
	if s.proc != nil {
		s.signal(syscall.SIGKILL)
		s.proc.Kill()
		s.proc = nil
	}
}

// recordMark returns where the request record ends now, or -1 when the
// server keeps none.
func (s *runningServer) recordMark() int64 {
	fi, err := os.Stat(filepath.Join(s.dir, recordFile))
	if err != nil {
		return -1
	}
	return fi.Size()
}

// recordedSince reads the requests recorded after mark.
func (s *runningServer) recordedSince(mark int64) ([]nbd.Recorded, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, recordFile))
	if err != nil {
		return nil, err
	}
	if mark > int64(len(b)) {
		mark = 0 // the server was restarted and the file begun anew
	}
	var out []nbd.Recorded
	dec := json.NewDecoder(bytes.NewReader(b[mark:]))
	for dec.More() {
		var r nbd.Recorded
		if err := dec.Decode(&r); err != nil {
			return out, fmt.Errorf("conform: request record: %w", err)
		}
		out = append(out, r)
	}
	return out, nil
}
