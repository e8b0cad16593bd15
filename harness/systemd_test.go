package harness_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/harness"
	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/servers"
)

// freePort returns a loopback address no one listens on (a moment ago).
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// activate runs argv under systemd-socket-activate listening on addr,
// with env added, and returns once addr accepts connections.
func activate(t *testing.T, addr string, env []string, flags []string, argv ...string) *servers.Proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	args := append(append([]string{"-l", addr}, flags...), argv...)
	for _, e := range env {
		args = append([]string{"-E", e}, args...)
	}
	p, err := servers.StartListening(ctx, nbd.Addr{Network: "tcp", Address: addr}, 30*time.Second, "systemd-socket-activate", args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("systemd-socket-activate output:\n%s", p.Output())
		}
	})
	return p
}

// notifySocket listens for sd_notify datagrams at a path for NOTIFY_SOCKET.
func notifySocket(t *testing.T) (*net.UnixConn, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, path
}

func expectNotice(t *testing.T, c *net.UnixConn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify %s: %v", want, err)
	}
	if got := string(buf[:n]); !strings.Contains(got, want) {
		t.Fatalf("sd_notify sent %q, want %s", got, want)
	}
}

// Socket activation: nbdlab serve takes the listening socket systemd
// passes, says READY=1 once it serves, writes its pid file, and on
// SIGTERM says STOPPING=1 and removes the pid file.
func TestSocketActivation(t *testing.T) {
	testenv.Need(t, "systemd-socket-activate", "nbdinfo")
	notify, path := notifySocket(t)
	addr, pid := freePort(t), filepath.Join(t.TempDir(), "nbdlab.pid")
	p := activate(t, addr, []string{"NOTIFY_SOCKET=" + path}, nil, testenv.Nbdlab(t), "serve", "--pid-file", pid, "d=mem:64M")
	// systemd-socket-activate starts the server on the first connection.
	if got := strings.TrimSpace(harness.Run(t, "nbdinfo", "--size", "nbd://"+addr+"/d")); got != "67108864" {
		t.Fatalf("nbdinfo --size = %q", got)
	}
	expectNotice(t, notify, "READY=1")
	b, err := os.ReadFile(pid)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if n != p.Cmd.Process.Pid { // systemd-socket-activate execs the server in its place
		t.Errorf("pid file says %q, the server is %d", b, p.Cmd.Process.Pid)
	}
	if out := harness.Run(t, "nbdinfo", "--size", "nbd://"+addr+"/d"); strings.TrimSpace(out) != "67108864" {
		t.Errorf("a second client: %q", out)
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	expectNotice(t, notify, "STOPPING=1")
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("still running 30s after SIGTERM")
	}
	if _, err := os.Stat(pid); !os.IsNotExist(err) {
		t.Errorf("pid file left behind: %v", err)
	}
	// --listen beside activated sockets is refused, naming why.
	addr = freePort(t)
	p = activate(t, addr, nil, nil, testenv.Nbdlab(t), "serve", "--listen", "127.0.0.1:1", "d=mem:1M")
	harness.RunErr("nbdinfo", "--size", "nbd://"+addr+"/d") // starts it
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("nbdlab serve --listen under socket activation did not exit")
	}
	if !strings.Contains(p.Output(), "--listen is not taken") {
		t.Errorf("output does not say why --listen was refused:\n%s", p.Output())
	}
}

// --inetd serves the connection on standard input: one process per
// client under systemd-socket-activate --accept --inetd (as inetd and
// Accept=yes run it); a listening socket on standard input is named as
// the mistake it is.
func TestInetd(t *testing.T) {
	testenv.Need(t, "systemd-socket-activate", "nbdinfo")
	addr := freePort(t)
	activate(t, addr, nil, []string{"--accept", "--inetd"}, testenv.Nbdlab(t), "serve", "--inetd", "d=mem:64M")
	for i := range 2 {
		if got := strings.TrimSpace(harness.Run(t, "nbdinfo", "--size", "nbd://"+addr+"/d")); got != "67108864" {
			t.Fatalf("client %d: nbdinfo --size = %q", i, got)
		}
	}
	out := harness.Run(t, "nbdinfo", "nbd://"+addr+"/d")
	if !strings.Contains(out, "export-size: 67108864") {
		t.Errorf("nbdinfo:\n%s", out)
	}

	addr = freePort(t)
	p := activate(t, addr, nil, []string{"--inetd"}, testenv.Nbdlab(t), "serve", "--inetd", "d=mem:64M")
	harness.RunErr("nbdinfo", "--size", "nbd://"+addr+"/d") // the server cannot serve it
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("nbdlab serve --inetd on a listening socket did not exit")
	}
	if !strings.Contains(p.Output(), "standard input is a listening socket") {
		t.Errorf("output does not name the listening socket:\n%s", p.Output())
	}
}

// The shipped units pass systemd-analyze verify, with nbdlab where
// ExecStart looks for it.
func TestSystemdUnits(t *testing.T) {
	testenv.Need(t, "systemd-analyze")
	dir := t.TempDir()
	units, err := filepath.Glob(filepath.Join("..", "dist", "systemd", "*"))
	if err != nil || len(units) != 4 {
		t.Fatalf("dist/systemd holds %v (%v), want two sockets and two services", units, err)
	}
	var paths []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "/usr/local/bin/nbdlab") && strings.HasSuffix(u, ".service") {
			t.Errorf("%s does not run /usr/local/bin/nbdlab", u)
		}
		name := filepath.Base(u)
		if strings.HasSuffix(name, "@.service") {
			name = strings.TrimSuffix(name, "@.service") + "@0.service" // an instance of the template
		}
		p := filepath.Join(dir, name)
		body := strings.ReplaceAll(string(b), "/usr/local/bin/nbdlab", testenv.Nbdlab(t))
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if name != filepath.Base(u) { // the socket looks for the template by its own name
			os.WriteFile(filepath.Join(dir, filepath.Base(u)), []byte(body), 0o644)
		}
		paths = append(paths, p)
	}
	cmd := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, paths...)...)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// qemu-nbd's habits: serve IMAGE (no NAME=), -p PORT, -r. The image is
// the first export, so the empty name reaches it too.
func TestServeQemuNbdSpellings(t *testing.T) {
	testenv.Need(t, "nbdinfo")
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(freePort(t))
	s := harness.Serve(t, "-p", port, "-r", img)
	if s.TCP != "127.0.0.1:"+port {
		t.Fatalf("listening on %q, want 127.0.0.1:%s", s.TCP, port)
	}
	for _, uri := range []string{"nbd://127.0.0.1:" + port + "/", "nbd://127.0.0.1:" + port + "/disk.img"} {
		if got := strings.TrimSpace(harness.Run(t, "nbdinfo", "--size", uri)); got != "4194304" {
			t.Errorf("%s: size %q", uri, got)
		}
		if _, err := harness.RunErr("nbdinfo", "--is", "read-only", uri); err != nil {
			t.Errorf("%s: not read-only under -r: %v", uri, err)
		}
	}
}

// --config: the exports of a file, read again on SIGHUP. New exports
// appear, removed ones refuse new clients while a connection to one goes
// on, and their files are closed once that connection ends; a config
// that does not parse changes nothing.
func TestConfigReload(t *testing.T) {
	testenv.Need(t, "nbdinfo")
	conf, img := filepath.Join(t.TempDir(), "exports"), filepath.Join(t.TempDir(), "a.img")
	write := func(body string) {
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	write("# the first\na=file:" + img + "\n")
	s := harness.Serve(t, "--listen", "127.0.0.1:0", "--config", conf)
	list := func() string { return harness.Run(t, "nbdinfo", "--list", "--json", "nbd://"+s.TCP) }
	if l := list(); !strings.Contains(l, `"export-name": "a"`) {
		t.Fatalf("before the reload:\n%s", l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	old, err := nbd.Dial(ctx, s.TCP, &nbd.ClientConfig{Export: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	hup := func(want func(string) bool) string {
		t.Helper()
		s.Cmd.Process.Signal(syscall.SIGHUP)
		var l string
		for i := 0; i < 100; i++ {
			if l = list(); want(l) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		return l
	}
	write("b=mem:2M\n")
	l := hup(func(l string) bool { return strings.Contains(l, `"export-name": "b"`) })
	if !strings.Contains(l, `"export-name": "b"`) || strings.Contains(l, `"export-name": "a"`) {
		t.Fatalf("after the reload:\n%s", l)
	}
	if _, err := old.WriteAt([]byte("still served"), 0); err != nil {
		t.Errorf("the connection to the removed export: %v", err)
	}
	if !holdsOpen(s.Cmd.Process.Pid, img) {
		t.Errorf("the removed export's file was closed while a connection used it")
	}
	old.Close()
	for i := 0; i < 100 && holdsOpen(s.Cmd.Process.Pid, img); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if holdsOpen(s.Cmd.Process.Pid, img) {
		t.Errorf("the removed export's file is still open after its last connection ended")
	}
	write("c=nosuch:1M\n")
	hup(func(string) bool { return strings.Contains(s.Output(), "config not reloaded") })
	if l := list(); !strings.Contains(l, `"export-name": "b"`) {
		t.Errorf("a bad config changed the exports:\n%s", l)
	}
	if !strings.Contains(s.Output(), "config not reloaded") {
		t.Errorf("the bad config was not reported:\n%s", s.Output())
	}
}

// --fork returns once the background server listens; its pid file names
// it; its log goes on into --log-file after it lets go of the terminal,
// and without one the caller is told the log is discarded; a server that
// cannot start makes --fork fail with why.
func TestServeFork(t *testing.T) {
	testenv.Need(t, "nbdinfo")
	addr, pid, logPath := freePort(t), filepath.Join(t.TempDir(), "pid"), filepath.Join(t.TempDir(), "log")
	if out := harness.Run(t, testenv.Nbdlab(t), "serve", "--fork", "--listen", addr, "--pid-file", pid, "--log-file", logPath, "d=mem:1M"); out != "" {
		t.Errorf("--fork with --log-file printed %q", out)
	}
	b, err := os.ReadFile(pid)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	t.Cleanup(func() { syscall.Kill(n, syscall.SIGTERM) })
	if got := strings.TrimSpace(harness.Run(t, "nbdinfo", "--size", "nbd://"+addr+"/d")); got != "1048576" {
		t.Errorf("the forked server: size %q", got)
	}
	// The export is logged after the server is ready, when the terminal
	// is no longer its output; each client's connection after that.
	for _, want := range []string{"msg=listening", "msg=export name=d"} {
		if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), want) {
			t.Errorf("the forked server's log lacks %q:\n%s", want, b)
		}
	}
	out, err := harness.RunErr(testenv.Nbdlab(t), "serve", "--fork", "--listen", addr, "d=mem:1M")
	if err == nil || !strings.Contains(out, "did not start") {
		t.Errorf("--fork on an address in use: %v\n%s", err, out)
	}
	other := freePort(t)
	out, err = harness.RunErr(testenv.Nbdlab(t), "serve", "--fork", "--listen", other, "d=mem:1M")
	if err != nil || !strings.Contains(out, "its log is discarded (--log-file FILE keeps it") {
		t.Errorf("--fork without --log-file: %v\n%s", err, out)
	}
	if m := regexp.MustCompile(`pid (\d+)`).FindStringSubmatch(out); m != nil {
		n2, _ := strconv.Atoi(m[1])
		syscall.Kill(n2, syscall.SIGTERM)
	}
	syscall.Kill(n, syscall.SIGTERM)
	for i := 0; i < 100 && syscall.Kill(n, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(pid); !os.IsNotExist(err) {
		t.Errorf("pid file left after SIGTERM: %v", err)
	}
}

// holdsOpen tells whether process pid has path open.
func holdsOpen(pid int, path string) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, _ := os.ReadDir(dir)
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && target == path {
			return true
		}
	}
	return false
}
