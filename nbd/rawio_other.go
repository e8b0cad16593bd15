//go:build !linux

package nbd

// useRawIO keeps the ordinary reads and writes: raw system calls are
// Linux's (rawio_linux.go).
func (t *transmission) useRawIO(in *connReader) {}

// rawWriter is Linux's; elsewhere none is made.
type rawWriter struct{}
