package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/labnet"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/servers"
)

// AgentPort is where the agent answers on its test address; the NBD
// server it starts listens on 10809 of the same address.
const AgentPort = 10810

// AgentOptions configure RunAgent.
type AgentOptions struct {
	IP     string // address to listen on
	Link   string // interface to shape
	Nbdlab string // the nbdlab binary that serves NBD
	// OwnKernel is true in a VM of its own: its CPU time is the whole
	// machine's. Otherwise (a namespace beside the client) it is the NBD
	// server's process and the nfsd threads.
	OwnKernel bool
	Backing   string // directory to hold the exports; a tmpfs is mounted there
	// OnDisk keeps the exports in Backing as it is, on whatever
	// filesystem holds it, instead of a tmpfs.
	OnDisk bool
	Out    io.Writer
}

// agentRequest is one line the client sends the agent.
type agentRequest struct {
	Op      string `json:"op"` // serve-nbd, stop-nbd, export-nfs, unexport-nfs, drop-caches, cpu, shape, quit
	Server  string `json:"server,omitempty"`
	Size    int64  `json:"size,omitempty"`
	Sync    bool   `json:"sync,omitempty"`
	Profile string `json:"profile,omitempty"`
}

// agentReply answers one request.
type agentReply struct {
	Err  string  `json:"err,omitempty"`
	CPU  float64 `json:"cpu,omitempty"` // seconds
	Path string  `json:"path,omitempty"`
}

// agent is the server side of the NFS comparison: it holds the backing
// store and offers it over NBD or NFS as the client asks.
type agent struct {
	o    AgentOptions
	nbd  *servers.Proc
	nfsd *nfsd
}

// RunAgent serves the client's requests until it says quit or ctx ends.
func RunAgent(ctx context.Context, o AgentOptions) error {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.OnDisk {
		if fi, err := os.Stat(o.Backing); err != nil || !fi.IsDir() {
			return fmt.Errorf("bench: agent: backing directory %s: not a directory (%v)", o.Backing, err)
		}
	} else if err := mountTmpfs(o.Backing); err != nil {
		return err
	}
	l, err := net.Listen("tcp", net.JoinHostPort(o.IP, strconv.Itoa(AgentPort)))
	if err != nil {
		return fmt.Errorf("bench: agent: %w", err)
	}
	defer l.Close()
	a := &agent{o: o}
	defer a.close()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	fmt.Fprintf(o.Out, "agent: listening on %s\n", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("bench: agent: %w", err)
		}
		quit := a.session(ctx, c)
		c.Close()
		if quit {
			return nil
		}
	}
}

// session answers one client connection's requests in order.
func (a *agent) session(ctx context.Context, c net.Conn) (quit bool) {
	sc := bufio.NewScanner(c)
	enc := json.NewEncoder(c)
	for sc.Scan() {
		var req agentRequest
		var rep agentReply
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			rep.Err = fmt.Sprintf("bad request %q: %v", sc.Text(), err)
		} else if req.Op == "quit" {
			enc.Encode(rep)
			return true
		} else if err := a.do(ctx, req, &rep); err != nil {
			rep.Err = err.Error()
		}
		if err := enc.Encode(rep); err != nil {
			return false
		}
	}
	return false
}

func (a *agent) do(ctx context.Context, req agentRequest, rep *agentReply) error {
	switch req.Op {
	case "serve-nbd":
		return a.serveNBD(ctx, req)
	case "stop-nbd":
		a.stopNBD()
		return os.RemoveAll(filepath.Join(a.o.Backing, "disk.img"))
	case "export-nfs":
		if a.nfsd == nil {
			n, err := startNfsd(ctx, a.o.Out)
			if err != nil {
				return err
			}
			a.nfsd = n
		}
		dir := filepath.Join(a.o.Backing, "nfs")
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return err
		}
		rep.Path = dir
		return a.nfsd.export(ctx, dir, req.Sync)
	case "unexport-nfs":
		dir := filepath.Join(a.o.Backing, "nfs")
		if a.nfsd != nil {
			if err := a.nfsd.unexport(ctx, dir); err != nil {
				return err
			}
		}
		return os.RemoveAll(dir)
	case "drop-caches":
		if !a.o.OnDisk {
			return nil // a tmpfs: nothing of the exports' can be dropped
		}
		return dropCaches()
	case "cpu":
		cpu, err := a.cpu()
		rep.CPU = cpu.Seconds()
		return err
	case "shape":
		p, err := labnet.FindProfile(req.Profile)
		if err != nil {
			return err
		}
		return labnet.Shape(ctx, nil, a.o.Link, p)
	}
	return fmt.Errorf("unknown op %q", req.Op)
}

// serveNBD serves a sparse image of req.Size on the backing store.
func (a *agent) serveNBD(ctx context.Context, req agentRequest) error {
	a.stopNBD()
	img := filepath.Join(a.o.Backing, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(img, req.Size); err != nil {
		return err
	}
	argv, err := nbdServerArgv(req.Server, a.o.Nbdlab, a.o.IP, img)
	if err != nil {
		return err
	}
	addr := nbd.Addr{Network: "tcp", Address: net.JoinHostPort(a.o.IP, "10809")}
	p, err := servers.StartListening(ctx, addr, 30*time.Second, argv[0], argv[1:]...)
	if err != nil {
		return fmt.Errorf("start %s: %w", req.Server, err)
	}
	a.nbd = p
	return nil
}

func (a *agent) stopNBD() {
	if a.nbd != nil {
		a.nbd.Stop(10 * time.Second)
		a.nbd = nil
	}
}

// cpu is the server side's CPU time so far.
func (a *agent) cpu() (time.Duration, error) {
	if a.o.OwnKernel {
		return procfs.SystemCPU()
	}
	sum, err := procfs.CommandCPU("nfsd")
	if err != nil {
		return 0, err
	}
	if a.nbd != nil {
		st, err := procfs.ReadStat(a.nbd.Cmd.Process.Pid)
		if err == nil {
			sum += st.CPU
		}
	}
	return sum, nil
}

func (a *agent) close() {
	a.stopNBD()
	if a.nfsd != nil {
		a.nfsd.stop()
	}
}

// nbdServer is the server the comparison puts under ext4: one of
// servers.TCP, listening on ip:10809 and exporting "d" from img.
func nbdServerArgv(server, nbdlab, ip, img string) ([]string, error) {
	s, err := servers.Find(server)
	if err != nil {
		return nil, err
	}
	return s.Argv(servers.Args{Nbdlab: nbdlab, Dir: filepath.Dir(img), IP: ip, Port: 10809, Img: img, Size: nbdExportSize})
}

// agentClient is the client's end of the control connection.
type agentClient struct {
	c   net.Conn
	sc  *bufio.Scanner
	enc *json.Encoder
}

// dialAgent connects to the agent at ip, retrying while it starts.
func dialAgent(ctx context.Context, ip string) (*agentClient, error) {
	addr := net.JoinHostPort(ip, strconv.Itoa(AgentPort))
	deadline := time.Now().Add(2 * time.Minute)
	for {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return &agentClient{c: c, sc: bufio.NewScanner(c), enc: json.NewEncoder(c)}, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("bench: the server side's agent at %s did not answer in 2m: %w", addr, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func (ac *agentClient) call(req agentRequest) (agentReply, error) {
	var rep agentReply
	if err := ac.enc.Encode(req); err != nil {
		return rep, fmt.Errorf("bench: agent %s: %w", req.Op, err)
	}
	if !ac.sc.Scan() {
		err := ac.sc.Err()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return rep, fmt.Errorf("bench: agent %s: %w", req.Op, err)
	}
	if err := json.Unmarshal(ac.sc.Bytes(), &rep); err != nil {
		return rep, fmt.Errorf("bench: agent %s: reply %q: %w", req.Op, ac.sc.Text(), err)
	}
	if rep.Err != "" {
		return rep, fmt.Errorf("bench: agent %s: %s", req.Op, rep.Err)
	}
	return rep, nil
}

func (ac *agentClient) cpu() (time.Duration, error) {
	rep, err := ac.call(agentRequest{Op: "cpu"})
	return time.Duration(rep.CPU * float64(time.Second)), err
}

func (ac *agentClient) close() error {
	ac.call(agentRequest{Op: "quit"})
	return ac.c.Close()
}
