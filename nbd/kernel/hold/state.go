//go:build linux

package hold

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nbdlab/nbdlab/nbd/kernel"
)

// StateDir holds a state file per device attached by nbdlab.
const StateDir = "/run/nbdlab"

// State is what nbdlab remembers about a device it attached.
type State struct {
	Device      string
	Source      string // URI or image
	Connections int
	Interface   kernel.Interface
	PID         int // process serving or watching the device; 0 if none
	Persist     bool
	ReadOnly    bool
	Log         string
	Started     time.Time
	NetNS       string // the network namespace of the connecting process, whose socket table Dead reads
}

func statePath(n int) string { return filepath.Join(StateDir, "nbd"+strconv.Itoa(n)+".json") }

// Save records st for device n.
func Save(n int, st State) error {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return fmt.Errorf("hold: %w", err)
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := statePath(n) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("hold: %w", err)
	}
	return os.Rename(tmp, statePath(n))
}

// Load returns what was recorded for device n, if anything.
func Load(n int) (State, bool) {
	var st State
	b, err := os.ReadFile(statePath(n))
	if err != nil {
		return st, false
	}
	return st, json.Unmarshal(b, &st) == nil
}

// Remove forgets device n.
func Remove(n int) error {
	err := os.Remove(statePath(n))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
