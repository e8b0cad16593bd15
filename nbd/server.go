package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("nbd: server closed")

// ErrTooManyConnections is returned by ServeConn for a connection over
// the server's MaxConnections, which it closes at once.
var ErrTooManyConnections = errors.New("nbd: too many connections")

// Server serves Exports over the NBD protocol. Set the fields before the
// first call to Serve and do not change them afterwards; SetExports
// changes the exports while serving.
type Server struct {
	// Exports are the exports served. The first one also answers the empty
	// export name.
	Exports []*Export
	// TLSConfig, when set, makes TLS mandatory: every option but
	// NBD_OPT_STARTTLS and NBD_OPT_ABORT is refused before TLS.
	TLSConfig *tls.Config
	// Logger receives a line per connection at Info and a line per request
	// at Debug. Nil means slog.Default().
	Logger *slog.Logger

	// What one client, or many, may make the server hold. Zero means the
	// default; a negative value, no limit.

	// MaxConnections bounds the connections served at once; the server
	// closes any more at once, with a log line (DefaultMaxConnections).
	MaxConnections int
	// HandshakeTimeout bounds a connection's handshake, TLS included
	// (DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// IdleTimeout drops a connection that has sent no request and waits
	// for no reply for this long. Zero means never: the kernel's client
	// may rightly stay idle for days.
	IdleTimeout time.Duration
	// WriteTimeout drops a connection that has taken none of its replies
	// for this long (DefaultWriteTimeout).
	WriteTimeout time.Duration
	// MaxInflight bounds the bytes of requests that all connections
	// together have in flight (DefaultMaxInflight); one connection may
	// have a quarter of it.
	MaxInflight int64
	// MaxPayload is the largest READ or WRITE payload served
	// (DefaultMaxPayload), and at most a connection's share of
	// MaxInflight; it is advertised as the maximum block size. A larger
	// read gets EINVAL; so does a larger write, once its payload has been
	// read and dropped (the connection goes on).
	MaxPayload int64
	// Workers bounds the requests of one connection that run at once
	// (DefaultWorkers). An idle connection holds one goroutine and no
	// thread.
	Workers int

	// Record, when set, is called with every request the server reads,
	// DISC included, as it reads it (in order on each connection, before
	// it is checked or answered): how a test sees what a client (the
	// kernel) sends. It must be safe for concurrent use.
	Record func(Recorded)

	// Retired, when set, is called once an export SetExports took out is
	// no longer used by any connection, after it has been flushed: where
	// its files can be closed. It is called at most once per export, from
	// SetExports or from the goroutine of the connection that used it last.
	Retired func(*Export)

	exportsMu sync.RWMutex
	current   []*Export // set by SetExports; nil means Exports
	retired   []*Export // taken out by SetExports, still in use: flushed at Shutdown
	users     map[*Export]int

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	closing   atomic.Bool
	wg        sync.WaitGroup
	bufs      bufPool
	pipes     pipePool
	budget    budget
	refused   refusals
	connIDs   atomic.Uint64
}

// Recorded is one request as the server read it.
type Recorded struct {
	Conn   uint64 `json:"conn"` // which connection, numbered from 1 in order of arrival
	Export string `json:"export"`
	Cmd    string `json:"cmd"`
	Flags  string `json:"flags,omitempty"`
	Offset uint64 `json:"offset"`
	Length uint32 `json:"length"`
}

// Defaults of the Server's limits.
const (
	DefaultMaxConnections   = 1024
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultWriteTimeout     = time.Minute
	DefaultMaxInflight      = 256 << 20
	DefaultWorkers          = 16
	// maxOptions bounds the options of one handshake: a client lists
	// and asks about exports, and then picks one.
	maxOptions = 1024
)

// limit returns v, or def when v is zero, or 0 (no limit) when v is
// negative.
func limit[T int | int64 | time.Duration](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// maxPayload is the largest payload the server serves.
func (s *Server) maxPayload() uint32 {
	_, share := s.budget.get(limit(s.MaxInflight, DefaultMaxInflight))
	return uint32(min(limit(s.MaxPayload, DefaultMaxPayload), share, 1<<31))
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) shuttingDown() bool { return s.closing.Load() }

// exports are the exports served now.
func (s *Server) exports() []*Export {
	s.exportsMu.RLock()
	defer s.exportsMu.RUnlock()
	return s.exportsLocked()
}

func (s *Server) exportsLocked() []*Export {
	if s.current != nil {
		return s.current
	}
	return s.Exports
}

// SetExports replaces the exports while serving: new clients see the new
// set (the first answers the empty name), while connections that chose
// an export go on with it. An export taken out is flushed and handed to
// Retired once its last connection ends (at once when it has none). An
// export taken out and still in use may come back; one already handed to
// Retired must not.
func (s *Server) SetExports(exports []*Export) {
	s.exportsMu.Lock()
	s.retired = slices.DeleteFunc(s.retired, func(e *Export) bool { return slices.Contains(exports, e) })
	var idle []*Export
	for _, e := range s.exportsLocked() {
		if slices.Contains(exports, e) || slices.Contains(s.retired, e) {
			continue
		}
		if s.users[e] == 0 {
			idle = append(idle, e)
			s.markReleased(e)
		} else {
			s.retired = append(s.retired, e)
		}
	}
	s.current = append([]*Export{}, exports...)
	s.exportsMu.Unlock()
	for _, e := range idle {
		s.release(e)
	}
}

// use counts a connection that entered transmission with e, and tells
// whether e may still be used: false when SetExports took it out and its
// last user let go of it between the handshake's lookup and now.
func (s *Server) use(e *Export) bool {
	s.exportsMu.Lock()
	defer s.exportsMu.Unlock()
	if e.released {
		return false
	}
	if s.users == nil {
		s.users = map[*Export]int{}
	}
	s.users[e]++
	return true
}

// done uncounts a connection that used e; the last user of a retired
// export releases it.
func (s *Server) done(e *Export) {
	s.exportsMu.Lock()
	s.users[e]--
	last := s.users[e] == 0
	if last {
		delete(s.users, e)
	}
	if !last || !slices.Contains(s.retired, e) {
		s.exportsMu.Unlock()
		return
	}
	s.retired = slices.DeleteFunc(s.retired, func(r *Export) bool { return r == e })
	s.markReleased(e)
	s.exportsMu.Unlock()
	s.release(e)
}

// markReleased marks e let go of, on e itself: a set of released
// exports kept by the server held every export a reload ever took out,
// and its backend (a mem: export's memory), for the server's life.
func (s *Server) markReleased(e *Export) { e.released = true }

// release flushes a retired export that no connection uses and hands it
// to Retired.
func (s *Server) release(e *Export) {
	if err := e.Backend.Sync(); err != nil {
		s.logger().Error("flush of a retired export failed", "export", e.Name, "err", err)
	}
	if s.Retired != nil {
		s.Retired(e)
	}
}

// lookup finds an export by name; the empty name is the first export.
func (s *Server) lookup(name string) *Export {
	exports := s.exports()
	for _, e := range exports {
		if e.Name == name {
			return e
		}
	}
	if name == "" && len(exports) > 0 {
		return exports[0]
	}
	return nil
}

// Serve accepts connections on l and serves each in its own goroutine. It
// always returns a non-nil error; after Shutdown or Close, ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = map[net.Listener]struct{}{}
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("accept failed; retrying", "listener", l.Addr().String(), "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		go s.ServeConn(context.Background(), c)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Shutdown stops the server gracefully: it closes the listeners, stops
// reading new requests, lets the requests in flight complete and be
// answered, flushes every export and closes the connections. If ctx ends
// first, the remaining connections are closed at once and ctx's error is
// returned then, without waiting for backend calls still running or
// flushing the exports: a backend call that never returns (a hung disk, a
// stalled network filesystem) would otherwise hold Shutdown, and the
// process that called it, for ever. Those calls end on their own; their
// sessions send nothing more.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stop((*serverConn).drain)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
	var err error
	s.pipes.closeAll()
	s.exportsMu.RLock()
	all := append(slices.Clone(s.retired), s.exportsLocked()...)
	s.exportsMu.RUnlock()
	for _, e := range all {
		if serr := e.Backend.Sync(); serr != nil && err == nil {
			err = fmt.Errorf("nbd: flush export %q: %w", e.Name, serr)
		}
	}
	return err
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.stop((*serverConn).close)
	s.pipes.closeAll()
	return nil
}

// stop marks the server closing, closes its listeners and ends each
// connection with end.
func (s *Server) stop(end func(*serverConn)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		end(c)
	}
}

// refusals counts the connections refused at the limit, for a log line a
// second at most however many come.
type refusals struct {
	mu     sync.Mutex
	n      int
	logged time.Time
}

// refuse closes a connection over the limit.
func (s *Server) refuse(c net.Conn) {
	c.Close()
	r := &s.refused
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	if time.Since(r.logged) >= time.Second {
		s.logger().Warn("refusing connections: at the connection limit", "limit", limit(s.MaxConnections, DefaultMaxConnections),
			"refused", r.n, "peer", peerName(c))
		r.n, r.logged = 0, time.Now()
	}
}
