//go:build !linux

package nbd

import "net"

// detach keeps connections in the poller where blocking sockets are not
// worth their cost.
func detach(c net.Conn) (net.Conn, error) { return c, nil }
