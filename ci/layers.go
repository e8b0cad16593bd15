package ci

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/nbdlab/nbdlab/internal/command"
)

// Module is the module path of this project.
const Module = "github.com/nbdlab/nbdlab"

// Layers returns the height of every package of the tree, relative to
// the module: a package may import only packages lower than itself. The
// image locks sit at the bottom; the protocol, archives and helpers above
// them; the kernel client and the kernel store above those; the module
// builder, the VMs and the test kit above those; the main job, benchmarks
// and CI above everything they run; the command on top.
func Layers() map[string]int {
	return map[string]int{
		"imagelock":         0,
		"internal/cachedir": 1, "internal/command": 1, "internal/procfs": 1, "internal/ready": 1,
		"internal/step": 1, "internal/unixpair": 1, "internal/service": 1, "internal/tlscreds": 1, "cpio": 1, "qcow2": 1, "conform/report": 1,
		"internal/selfbuild": 2, "nbd": 2, "debian": 2, "labnet": 2,
		"internal/testenv": 3, "nbd/nbdtest": 3, "nbd/kernel": 3, "kernels": 3, "servers": 3,
		"kmod": 4, "vm": 4, "nbd/kernel/hold": 4, "harness": 4,
		"vm/vmtest": 5, "lab": 5, "bench": 5, "ci": 5, "conform/protocol": 5, "conform/kernelsuite": 5,
		"cmd/nbdlab": 6,
	}
}

// Imports lists each package of the module with the packages of the
// module it imports (not counting its tests), by their paths relative to
// the module.
func Imports(ctx context.Context, run command.Runner, dir string) (map[string][]string, error) {
	var out strings.Builder
	if err := run(ctx, dir, &out, nil, "go", "list", "-json=ImportPath,Imports", "./..."); err != nil {
		return nil, fmt.Errorf("ci: %w", err)
	}
	graph := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(out.String()))
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("ci: go list: %w", err)
		}
		name := rel(p.ImportPath)
		graph[name] = []string{}
		for _, imp := range p.Imports {
			if imp == Module || strings.HasPrefix(imp, Module+"/") {
				graph[name] = append(graph[name], rel(imp))
			}
		}
	}
	return graph, nil
}

func rel(path string) string {
	if path == Module {
		return "."
	}
	return strings.TrimPrefix(path, Module+"/")
}

// CheckLayers returns one line for each import that does not run
// downward, and for each package without a layer.
func CheckLayers(graph map[string][]string, layers map[string]int) []string {
	var bad []string
	for pkg, imps := range graph {
		lp, ok := layers[pkg]
		if !ok {
			bad = append(bad, fmt.Sprintf("%s has no layer: add it to ci.Layers", pkg))
			continue
		}
		for _, imp := range imps {
			if li, ok := layers[imp]; ok && li >= lp {
				bad = append(bad, fmt.Sprintf("%s (layer %d) imports %s (layer %d), which is not below it", pkg, lp, imp, li))
			}
		}
	}
	sort.Strings(bad)
	return bad
}
