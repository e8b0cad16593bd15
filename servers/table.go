package servers

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/nbdlab/nbdlab/nbd"
)

// Spec is an NBD server that the kernel's client is run against
// over TCP, by the kernel suite and the kernel benchmarks: Argv starts it
// in the foreground listening on a test address, exporting "d". Argv
// fails only when it cannot write a file the server needs (nbd-server's
// configuration).
type Spec struct {
	Name   string
	What   string
	Memory bool // exports memory of its own, not Args.Img
	Argv   func(a Args) ([]string, error)
}

// Args say where a Spec listens and what it exports.
type Args struct {
	Nbdlab string // the nbdlab binary
	Dir    string // a directory of the server's own, for its files
	IP     string
	Port   int
	Img    string // a file of Size bytes, for the servers that export files
	Size   int64
	Record string // nbdlab's servers record requests here, if set
}

func (a Args) listen() string { return net.JoinHostPort(a.IP, strconv.Itoa(a.Port)) }

func (a Args) nbdlab(export string) ([]string, error) {
	argv := []string{a.Nbdlab, "serve", "--listen", a.listen()}
	if a.Record != "" {
		argv = append(argv, "--record", a.Record)
	}
	return append(argv, "d="+export), nil
}

// TCP are nbdlab's servers and its peers, as the kernel meets them.
func TCP() []Spec {
	return []Spec{
		{"nbdlab-mem", "nbdlab serve d=mem:SIZE", true, func(a Args) ([]string, error) {
			return a.nbdlab("mem:" + strconv.FormatInt(a.Size, 10))
		}},
		{"nbdlab-file", "nbdlab serve d=file:IMG", false, func(a Args) ([]string, error) {
			return a.nbdlab("file:" + a.Img)
		}},
		{"nbd-server", "nbd-server (daemon) with flush, fua, trim", false, func(a Args) ([]string, error) {
			return NBDServer(a.Dir, nbd.Addr{Network: "tcp", Address: a.listen()}, a.Img)
		}},
		{"nbdkit-memory", "nbdkit memory SIZE", true, func(a Args) ([]string, error) {
			return []string{"nbdkit", "-f", "-i", a.IP, "-p", strconv.Itoa(a.Port), "memory", strconv.FormatInt(a.Size, 10)}, nil
		}},
		{"nbdkit-file", "nbdkit file IMG", false, func(a Args) ([]string, error) {
			return []string{"nbdkit", "-f", "-i", a.IP, "-p", strconv.Itoa(a.Port), "file", a.Img}, nil
		}},
		{"qemu-nbd", "qemu-nbd -f raw --shared=32 --cache=none IMG (no --cache=none without O_DIRECT)", false, func(a Args) ([]string, error) {
			argv := []string{"qemu-nbd", "-t", "--shared=32", "-f", "raw", "-x", "d", "-b", a.IP, "-p", strconv.Itoa(a.Port)}
			if directIO(a.Img) {
				// Where the filesystem has O_DIRECT (tmpfs only since
				// Linux 6.6): qemu-nbd refuses --cache=none without it.
				argv = append(argv, "--cache=none", "--aio=threads")
			}
			return append(argv, a.Img), nil
		}},
	}
}

// Find returns the server called name.
func Find(name string) (Spec, error) {
	var names []string
	for _, s := range TCP() {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return Spec{}, fmt.Errorf("unknown server %q; known: %s", name, strings.Join(names, ", "))
}

// NBDServer writes a configuration for nbd-server into dir, listening on
// addr (TCP or a unix socket) and exporting img as "d" with flush, FUA
// and trim, and returns the command that runs it as the daemon it must
// be to serve more than one client (-d serves one): a shell holds its
// place, so that stopping the shell stops the daemon. nbd-server's
// parent returns before its daemon writes the pid file (on a loaded
// host, long before), so the shell waits up to 10 s for the file.
func NBDServer(dir string, addr nbd.Addr, img string) ([]string, error) {
	var listen string
	switch addr.Network {
	case "unix":
		listen = "    unixsock = " + addr.Address + "\n"
	case "tcp":
		host, port, err := net.SplitHostPort(addr.Address)
		if err != nil {
			return nil, fmt.Errorf("servers: nbd-server address %q: %w", addr.Address, err)
		}
		listen = fmt.Sprintf("    listenaddr = %s\n    port = %s\n", host, port)
	default:
		return nil, fmt.Errorf("servers: nbd-server cannot listen on %s", addr)
	}
	conf, pid := filepath.Join(dir, "nbd-server.conf"), filepath.Join(dir, "nbd-server.pid")
	body := "[generic]\n" + listen + "[d]\n    exportname = " + img + "\n    flush = true\n    fua = true\n    trim = true\n"
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return nil, fmt.Errorf("servers: nbd-server configuration: %w", err)
	}
	const script = `nbd-server -C "$1" -p "$2" || exit 1
i=0
while [ ! -s "$2" ]; do
	i=$((i+1)); [ $i -le 100 ] || { echo "nbd-server wrote no pid file $2 in 10 s" >&2; exit 1; }
	sleep 0.1
done
trap 'kill $(cat "$2"); exit 0' TERM INT
while kill -0 $(cat "$2") 2>/dev/null; do sleep 1; done
exit 1`
	return []string{"sh", "-c", script, "nbd-server", conf, pid}, nil
}

// directIO reports whether path can be opened with O_DIRECT.
func directIO(path string) bool {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}
