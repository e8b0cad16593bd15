//go:build race

package nbd_test

// raceEnabled: the race detector slows memory copies several times over,
// past what the server takes for a fast backend.
const raceEnabled = true
