package servers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nbdlab/nbdlab/internal/ready"
	"github.com/nbdlab/nbdlab/nbd"
)

// Proc is a child process with its combined output captured.
type Proc struct {
	Cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	err  error
}

// Output returns what the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Start starts name with args, capturing its output. The process is
// killed when ctx ends.
func Start(ctx context.Context, name string, args ...string) (*Proc, error) {
	return start(exec.CommandContext(ctx, name, args...))
}

func start(cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	p.Cmd.Cancel = func() error { return p.Cmd.Process.Signal(syscall.SIGKILL) }
	pr, pw := io.Pipe()
	p.Cmd.Stdout, p.Cmd.Stderr = pw, pw
	if err := p.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("servers: start %s: %w", p.Cmd.Path, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		p.err = p.Cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	return p, nil
}

// Stop sends SIGTERM and waits for the process to exit, up to timeout,
// then kills it. It returns the exit error, nil for status 0.
func (p *Proc) Stop(timeout time.Duration) error {
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("servers: %s did not exit within %s of SIGTERM", p.Cmd.Path, timeout)
	}
}

// Kill kills the process and waits for it.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	<-p.done
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// StartListening starts a server that has no ready signal of its own (a
// peer such as nbdkit or qemu-nbd) and returns once addr accepts
// connections, or fails when the process exits first or timeout passes.
func StartListening(ctx context.Context, addr nbd.Addr, timeout time.Duration, name string, args ...string) (*Proc, error) {
	p, err := Start(ctx, name, args...)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout(addr.Network, addr.Address, time.Second)
		if err == nil {
			c.Close()
			return p, nil
		}
		select {
		case <-p.Done():
			return nil, fmt.Errorf("servers: %s exited before it listened on %s: %v\n%s", name, addr, p.err, p.Output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("servers: %s not listening on %s after %s\n%s", name, addr, timeout, p.Output())
		}
	}
}

// StartOn starts a server that listens on the unix socket sock and
// returns once it does: argv "nbdlab serve ..." runs the binary nbdlab
// and waits for its ready signal; anything else is a peer, waited for
// with StartListening.
func StartOn(ctx context.Context, sock, nbdlab string, argv ...string) (*Proc, error) {
	if len(argv) > 1 && argv[0] == "nbdlab" && argv[1] == "serve" {
		s, err := StartServe(ctx, nbdlab, argv[2:]...)
		if err != nil {
			return nil, err
		}
		return s.Proc, nil
	}
	return StartListening(ctx, nbd.Addr{Network: "unix", Address: sock}, 30*time.Second, argv[0], argv[1:]...)
}

// Nbdlab is a running "nbdlab serve".
type Nbdlab struct {
	*Proc
	Addrs []nbd.Addr // where it listens, in the order of its --listen flags
	TCP   string     // HOST:PORT of the first TCP listener, if any
	Unix  string     // path of the first unix socket, if any
}

// StartServe runs "nbdlab serve" with args and returns once it says, on
// its --ready-fd, that every listener is up.
func StartServe(ctx context.Context, bin string, args ...string) (*Nbdlab, error) {
	rp, err := ready.NewPipe()
	if err != nil {
		return nil, err
	}
	defer rp.Close()
	cmd := exec.CommandContext(ctx, bin, append([]string{"serve", "--ready-fd", "3"}, args...)...)
	cmd.ExtraFiles = []*os.File{rp.Child()}
	p, err := start(cmd)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	addrs, err := rp.Wait(wctx)
	if err != nil {
		if errors.Is(err, ready.ErrExited) {
			<-p.done
		} else {
			p.Kill()
		}
		return nil, fmt.Errorf("servers: nbdlab serve: %w (exit: %v)\n%s", err, p.err, p.Output())
	}
	s := &Nbdlab{Proc: p}
	for _, f := range strings.Fields(addrs) {
		a, err := nbd.ParseAddr(f)
		if err != nil {
			p.Kill()
			return nil, fmt.Errorf("servers: nbdlab serve said it listens on %q: %w", addrs, err)
		}
		s.Addrs = append(s.Addrs, a)
		switch {
		case a.Network == "unix" && s.Unix == "":
			s.Unix = a.Address
		case a.Network == "tcp" && s.TCP == "":
			s.TCP = a.Address
		}
	}
	return s, nil
}

// URI returns an NBD URI for export over TCP or, if unix is set, over the
// unix socket.
func (s *Nbdlab) URI(export string, unix bool) string {
	if unix {
		return nbd.Addr{Network: "unix", Address: s.Unix}.URI(export)
	}
	return nbd.Addr{Network: "tcp", Address: s.TCP}.URI(export)
}
