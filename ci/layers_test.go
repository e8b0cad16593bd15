package ci

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/internal/command"
)

func TestCheckLayers(t *testing.T) {
	layers := map[string]int{"nbd": 1, "nbd/kernel": 2, "harness": 3}
	for _, tt := range []struct {
		name  string
		graph map[string][]string
		want  []string
	}{
		{"downward", map[string][]string{"harness": {"nbd", "nbd/kernel"}, "nbd/kernel": {"nbd"}, "nbd": nil}, nil},
		{"upward", map[string][]string{"nbd": {"harness"}},
			[]string{"nbd (layer 1) imports harness (layer 3), which is not below it"}},
		{"sideways", map[string][]string{"nbd/kernel": {"nbd/kernel"}},
			[]string{"nbd/kernel (layer 2) imports nbd/kernel (layer 2), which is not below it"}},
		{"new package", map[string][]string{"qcow2": {"nbd"}}, []string{"qcow2 has no layer: add it to ci.Layers"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := CheckLayers(tt.graph, layers); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("CheckLayers = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestTreeLayers holds the tree to its layers: the protocol, helpers and
// archives at the bottom, the command on top.
func TestTreeLayers(t *testing.T) {
	graph, err := Imports(context.Background(), command.Exec, "..")
	if err != nil {
		t.Fatal(err)
	}
	if len(graph) < len(Layers())-1 {
		t.Fatalf("go list found %d packages, fewer than the layers name", len(graph))
	}
	if bad := CheckLayers(graph, Layers()); len(bad) > 0 {
		t.Fatalf("imports against the layers:\n%s", strings.Join(bad, "\n"))
	}
}
