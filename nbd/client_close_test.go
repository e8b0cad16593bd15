package nbd_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

// A call whose reply the reader is still copying in when a failed send
// ends every pending call (fail) is answered once: by fail. The reader
// then finished it too, and closed the channel of a call no longer
// pending: a nil dereference that took the whole process down (seen as
// 1-2 panics in 5 runs of a 200-round loop of readers and writers whose
// server was closed under them). Here a relay between client and server
// holds a read's reply half sent, makes the client's next send fail, then
// lets the rest of the reply through.
func TestClientReplyAfterFail(t *testing.T) {
	srv := &nbd.Server{Exports: []*nbd.Export{{Name: "m", Backend: nbd.NewMem(1 << 20)}}, Logger: slog.New(slog.DiscardHandler)}
	serverEnd, relayToServer := nbdtest.SocketPair(t)
	go srv.ServeConn(context.Background(), serverEnd)
	clientEnd, relayToClient := nbdtest.SocketPair(t)
	go io.Copy(relayToServer, relayToClient) // requests, as they come

	// Replies: all of the handshake; once armed, 100 bytes of the read's
	// reply, then nothing until released.
	armed, paused, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		buf := make([]byte, 1)
		for {
			select {
			case <-armed:
				relayToServer.SetReadDeadline(time.Time{})
				io.CopyN(relayToClient, relayToServer, 100)
				close(paused)
				<-release
				io.Copy(relayToClient, relayToServer) // until the server hangs up
				relayToClient.Close()
				return
			default:
			}
			relayToServer.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			n, err := relayToServer.Read(buf)
			if n > 0 {
				relayToClient.Write(buf[:n])
			}
			if err != nil && !isTimeout(err) {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Simple replies: the reader finishes a read the moment its data is in.
	c, err := nbd.NewClient(ctx, clientEnd, &nbd.ClientConfig{Export: "m", NoStructuredReplies: true})
	if err != nil {
		t.Fatal(err)
	}
	close(armed)
	read := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 64<<10), 0)
		read <- err
	}()
	<-paused
	// The reader is inside the reply's data. The relay stops taking
	// requests, so the next send fails and fail ends every pending call.
	relayToClient.(*net.UnixConn).CloseRead()
	if _, err := c.WriteAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("a write through a relay that takes nothing succeeded")
	}
	if err := <-read; err == nil {
		t.Fatal("the read pending when sending failed succeeded")
	}
	close(release) // the rest of the reply: the reader finishes the call
	serverEnd.Close()
	c.Close() // returns once the reader has read to the end
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
