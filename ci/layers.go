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
// protocol, archives and helpers sit at the bottom; the kernel client and
// the kernel store above them; the module builder, the VMs and the test
// kit above those; the main job, benchmarks and CI above everything they
// run; the command on top.
func Layers() map[string]int {
	return map[string]int{
		"internal/cachedir": 0, "internal/command": 0, "internal/procfs": 0, "internal/ready": 0,
		"internal/step": 0, "internal/unixpair": 0, "internal/service": 0, "internal/tlscreds": 0, "cpio": 0, "qcow2": 0, "conform/report": 0,
		"internal/selfbuild": 1, "nbd": 1, "debian": 1, "labnet": 1,
		"internal/testenv": 2, "nbd/nbdtest": 2, "nbd/kernel": 2, "kernels": 2, "servers": 2,
		"kmod": 3, "vm": 3, "nbd/kernel/hold": 3, "harness": 3,
		"vm/vmtest": 4, "lab": 4, "bench": 4, "ci": 4, "conform/protocol": 4, "conform/kernelsuite": 4,
		"cmd/nbdlab": 5,
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
