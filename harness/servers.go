package harness

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// TCPServer is an NBD server that the kernel's client is run against
// over TCP, by the kernel suite and the kernel benchmarks: Argv starts it
// in the foreground listening on a test address, exporting "d".
type TCPServer struct {
	Name string
	What string
	Argv func(a ServerArgs) []string
}

// ServerArgs say where a TCPServer listens and what it exports.
type ServerArgs struct {
	Nbdlab string // the nbdlab binary
	Dir    string // a directory of the server's own, for its files
	IP     string
	Port   int
	Img    string // a file of Size bytes, for the servers that export files
	Size   int64
	Record string // nbdlab's servers record requests here, if set
}

func (a ServerArgs) listen() string { return net.JoinHostPort(a.IP, strconv.Itoa(a.Port)) }

func (a ServerArgs) nbdlab(export string) []string {
	argv := []string{a.Nbdlab, "serve", "--listen", a.listen()}
	if a.Record != "" {
		argv = append(argv, "--record", a.Record)
	}
	return append(argv, "d="+export)
}

// TCPServers are nbdlab's servers and its peers, as the kernel meets them.
func TCPServers() []TCPServer {
	return []TCPServer{
		{"nbdlab-mem", "nbdlab serve d=mem:SIZE", func(a ServerArgs) []string {
			return a.nbdlab("mem:" + strconv.FormatInt(a.Size, 10))
		}},
		{"nbdlab-file", "nbdlab serve d=file:IMG", func(a ServerArgs) []string {
			return a.nbdlab("file:" + a.Img)
		}},
		{"nbd-server", "nbd-server (daemon) with flush, fua, trim", func(a ServerArgs) []string {
			conf, pid := filepath.Join(a.Dir, "nbd-server.conf"), filepath.Join(a.Dir, "nbd-server.pid")
			os.WriteFile(conf, []byte(fmt.Sprintf("[generic]\n    listenaddr = %s\n    port = %d\n[d]\n    exportname = %s\n    flush = true\n    fua = true\n    trim = true\n", a.IP, a.Port, a.Img)), 0o644)
			return NBDServerDaemon(conf, pid)
		}},
		{"nbdkit-memory", "nbdkit memory SIZE", func(a ServerArgs) []string {
			return []string{"nbdkit", "-f", "-i", a.IP, "-p", strconv.Itoa(a.Port), "memory", strconv.FormatInt(a.Size, 10)}
		}},
		{"nbdkit-file", "nbdkit file IMG", func(a ServerArgs) []string {
			return []string{"nbdkit", "-f", "-i", a.IP, "-p", strconv.Itoa(a.Port), "file", a.Img}
		}},
		{"qemu-nbd", "qemu-nbd -f raw --shared=32 --cache=none IMG", func(a ServerArgs) []string {
			return []string{"qemu-nbd", "-t", "--shared=32", "-f", "raw", "-x", "d", "-b", a.IP, "-p", strconv.Itoa(a.Port), "--cache=none", "--aio=threads", a.Img}
		}},
	}
}

// FindTCPServer returns the server called name.
func FindTCPServer(name string) (TCPServer, error) {
	var names []string
	for _, s := range TCPServers() {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return TCPServer{}, fmt.Errorf("unknown server %q; known: %s", name, strings.Join(names, ", "))
}

// NBDServerDaemon runs nbd-server with config conf as the daemon it must
// be to serve more than one client (-d serves one): a shell holds its
// place, so that stopping the shell stops the daemon.
func NBDServerDaemon(conf, pid string) []string {
	const script = `nbd-server -C "$1" -p "$2" || exit 1
trap 'kill $(cat "$2"); exit 0' TERM INT
while kill -0 $(cat "$2") 2>/dev/null; do sleep 1; done
exit 1`
	return []string{"sh", "-c", script, "nbd-server", conf, pid}
}
