package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"
)

// serverConn is the server's handle on one connection, for Shutdown and
// Close: they end it differently before and after the handshake.
type serverConn struct {
	mu           sync.Mutex
	conn         net.Conn
	transmitting bool
	t            *transmission // once transmitting
}

// ServeConn serves one client connection until it disconnects, or ctx
// ends (the connection is then closed at once, as Close would), and
// closes it. It returns why the session ended: nil for a clean
// disconnect.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) (err error) {
	sc := &serverConn{conn: c}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		c.Close()
		return ErrServerClosed
	}
	if max := limit(s.MaxConnections, DefaultMaxConnections); max > 0 && len(s.conns) >= max {
		s.mu.Unlock()
		s.refuse(c)
		return ErrTooManyConnections
	}
	if s.conns == nil {
		s.conns = map[*serverConn]struct{}{}
	}
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, sc)
		s.mu.Unlock()
		sc.close()
		s.wg.Done()
	}()
	defer context.AfterFunc(ctx, sc.close)()
	log := s.logger().With("peer", peerName(c))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("nbd: panic serving %s: %v", peerName(c), p)
			log.Error("session crashed; other sessions are unaffected", "panic", p, "stack", string(debug.Stack()))
		}
	}()
	sess := newSession(s, c, c)
	if d := limit(s.HandshakeTimeout, DefaultHandshakeTimeout); d > 0 {
		c.SetDeadline(time.Now().Add(d))
	}
	defer func() {
		if sess.export != nil {
			s.done(sess.export)
		}
	}()
	if err := sess.negotiate(ctx); err != nil {
		switch {
		case errors.Is(err, errAbort):
			log.Debug("client aborted the handshake")
			return nil
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			log.Info("client closed the connection during the handshake")
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			log.Warn("handshake not done in time; closing connection", "timeout", limit(s.HandshakeTimeout, DefaultHandshakeTimeout))
			return err
		}
		log.Warn("handshake failed; closing connection", "err", err)
		return err
	}
	sc.mu.Lock()
	if s.closing.Load() {
		sc.mu.Unlock()
		return ErrServerClosed
	}
	sess.conn.SetDeadline(time.Time{})
	t := newTransmission(sess, log)
	sc.conn, sc.transmitting, sc.t = sess.conn, true, t
	sc.mu.Unlock()
	return t.run()
}

// close ends the connection at once.
func (sc *serverConn) close() {
	sc.mu.Lock()
	sc.conn.Close()
	sc.mu.Unlock()
}

// drain stops a connection from reading new requests; one still in the
// handshake is closed.
func (sc *serverConn) drain() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if !sc.transmitting {
		sc.conn.Close()
	} else if cr, ok := sc.conn.(interface{ CloseRead() error }); ok {
		cr.CloseRead()
	} else {
		sc.t.stopReading() // TLS: no CloseRead
	}
}

// peerName names the client for the log.
func peerName(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		return a.String()
	}
	if a := c.LocalAddr(); a != nil {
		return "unix:" + a.String()
	}
	return "?"
}
