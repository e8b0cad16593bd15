package testenv

import (
	"errors"
	"strings"
	"testing"
)

func TestRequire(t *testing.T) {
	if err := Require("sh", "go"); err != nil {
		t.Fatalf("Require(sh, go) = %v", err)
	}
	err := Require("sh", "nbdlab-no-such-tool", "nbdlab-nor-this")
	if !errors.Is(err, ErrMissingTool) || !strings.HasPrefix(err.Error(), "nbdlab-no-such-tool, nbdlab-nor-this not installed") {
		t.Fatalf("Require with two missing = %v; want both named, wrapping ErrMissingTool", err)
	}
}
