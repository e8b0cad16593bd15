package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nbdlab/nbdlab/internal/cachedir"
)

// BuildNbdlab builds the nbdlab command into dir and returns its path. The
// binary is static (CGO_ENABLED=0), so it can also be a lab VM's init.
func BuildNbdlab(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "nbdlab")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/nbdlab/nbdlab/cmd/nbdlab")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("harness: go build nbdlab: %w\n%s", err, b)
	}
	return out, nil
}

// BuildNbdlabCached builds nbdlab and keeps it in the user cache directory
// under a name derived from its contents, so identical builds share one
// file. The path is visible inside lab VMs.
func BuildNbdlabCached(ctx context.Context) (string, error) {
	tmp, err := os.MkdirTemp("", "nbdlab-build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	bin, err := BuildNbdlab(ctx, tmp)
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	dir := cachedir.Dir("bin")
	dst := filepath.Join(dir, "nbdlab-"+hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	part := dst + fmt.Sprintf(".%d.part", os.Getpid())
	if err := os.WriteFile(part, data, 0o755); err != nil {
		return "", err
	}
	return dst, os.Rename(part, dst)
}

// Proc is a child process with its combined output captured.
type Proc struct {
	Cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error
}

// Output returns what the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Start starts name with args. ready is called with each line the process
// prints, until it returns true; Start returns once it has, or fails when
// the process exits first or timeout passes.
func Start(ctx context.Context, timeout time.Duration, ready func(line string) bool, name string, args ...string) (*Proc, error) {
	p := &Proc{Cmd: exec.CommandContext(ctx, name, args...), done: make(chan struct{})}
	p.Cmd.Cancel = func() error { return p.Cmd.Process.Signal(syscall.SIGKILL) }
	pr, pw := io.Pipe()
	p.Cmd.Stdout, p.Cmd.Stderr = pw, pw
	if err := p.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("harness: start %s: %w", name, err)
	}
	readyc := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := ready == nil
		if signalled {
			close(readyc)
		}
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if !signalled && ready(sc.Text()) {
				signalled = true
				close(readyc)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		p.err = p.Cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	select {
	case <-readyc:
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("harness: %s exited before it was ready: %v\n%s", name, p.err, p.Output())
	case <-time.After(timeout):
		p.Kill()
		return nil, fmt.Errorf("harness: %s not ready after %s\n%s", name, timeout, p.Output())
	}
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
		return fmt.Errorf("harness: %s did not exit within %s of SIGTERM", p.Cmd.Path, timeout)
	}
}

// Kill kills the process and waits for it.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	<-p.done
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Server is a running "nbdlab serve".
type Server struct {
	*Proc
	TCP  string // HOST:PORT of the first TCP listener, if any
	Unix string // path of the first unix socket, if any
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// StartServe runs "nbdlab serve" with args and waits until it listens on
// all its addresses, whose number is given by the --listen flags (or 1).
func StartServe(ctx context.Context, bin string, args ...string) (*Server, error) {
	want := strings.Count(strings.Join(args, " "), "--listen")
	if want == 0 {
		want = 1
	}
	s := &Server{}
	n := 0
	p, err := Start(ctx, 30*time.Second, func(line string) bool {
		m := listeningRE.FindStringSubmatch(line)
		if m == nil {
			return false
		}
		if path, ok := strings.CutPrefix(m[1], "unix:"); ok {
			if s.Unix == "" {
				s.Unix = path
			}
		} else if s.TCP == "" {
			s.TCP = m[1]
		}
		n++
		return n == want
	}, bin, append([]string{"serve"}, args...)...)
	if err != nil {
		return nil, err
	}
	s.Proc = p
	return s, nil
}

// URI returns an NBD URI for export over TCP or, if unix is set, over the
// unix socket.
func (s *Server) URI(export string, unix bool) string {
	if unix {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, s.Unix)
	}
	return fmt.Sprintf("nbd://%s/%s", s.TCP, export)
}

// ErrMissingTool is wrapped by Require when a tool is not installed.
var ErrMissingTool = errors.New("not installed")

// Require reports which of the named programs are not on PATH.
func Require(tools ...string) error {
	var missing []string
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s %w (go run mage.go deps installs it)", strings.Join(missing, ", "), ErrMissingTool)
	}
	return nil
}

// InCI reports whether CI=true, where missing tools are failures.
func InCI() bool { return os.Getenv("CI") == "true" }
