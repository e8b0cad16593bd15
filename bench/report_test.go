package bench

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fixture is a small comparison: NBD, a sync and an async NFS target, a
// rate and a time workload, two rounds each.
func fixture() *Results {
	r := &Results{Kind: "nfs", Started: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	add := func(target string, durable bool, workload, unit string, vals ...float64) {
		for i, v := range vals {
			r.Figures = append(r.Figures, Figure{Topology: "netns", Link: "wan", LinkDesc: "wan (100 Mbit/s, 10 ms RTT)",
				Kernel: "6.12", CPUs: 2, Target: target, Durable: durable, Workload: workload, Unit: unit,
				Value: v, Round: i + 1, ClientCPU: 1, ServerCPU: 0.5, Server: "srv-" + target, Mount: "mnt-" + target})
			if target == "nbd" {
				r.Figures[len(r.Figures)-1].Requests = "requests of " + workload
			}
		}
	}
	add("nbd", true, "untar", "s", 2, 4)           // median 3
	add("nfs4.2-sync", true, "untar", "s", 12, 12) // 4x slower than NBD
	add("nfs4.2-async", false, "untar", "s", 1, 1) // faster, but not durable
	add("nbd", true, "seq-write", "MiB/s", 30, 30) // NBD loses to sync NFS
	add("nfs4.2-sync", true, "seq-write", "MiB/s", 60, 60)
	add("nfs4.2-async", false, "seq-write", "MiB/s", 600, 600)
	return r
}

func TestNFSReport(t *testing.T) {
	var b bytes.Buffer
	if err := fixture().WriteNFSReport(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"## netns, link wan (100 Mbit/s, 10 ms RTT)",
		"| workload | unit | nbd | nfs4.2-sync | nfs4.2-async* | NBD vs NFS |",
		// The async target is faster in both, yet the ratio is against
		// the sync one: 12/3 and 30/60; two rounds draw no verdict.
		// The ratio is the median of the four ratios of a round to a round,
		// 12/2 twice and 12/4 twice: the geometric mean of 6 and 3.
		"| untar | s | 3.00 (2-4) | 12.0 (12-12) | 1.00 (1-1) | 4.24x [3.00-6.00] too few rounds |",
		"| seq-write | MiB/s | 30.0 (30-30) | 60.0 (60-60) | 600 (600-600) | 0.50x [0.50-0.50] too few rounds |",
		"| untar | 1.00 + 0.50 | 1.00 + 0.50 | 1.00 + 0.50 |",
		"NBD: srv-nbd, ext4 (mnt-nbd). NFS: srv-nfs4.2-sync.",
		"| untar | requests of untar |\n| seq-write | requests of seq-write |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// TestNFSReportClock: a section measured on the instruction clock says so
// and what its figures then mean, one on the host's clock does not, and
// the header names the clock of each topology; each section gives its own
// VM's sizes.
func TestNFSReportClock(t *testing.T) {
	r := fixture()
	for i := range r.Figures {
		f := &r.Figures[i]
		f.Accel, f.Files, f.SmallFiles, f.FileBytes = "tcg+icount", 400, 50, 16<<20
		vms := *f
		vms.Topology, vms.Link, vms.LinkDesc, vms.Accel = "vms", "none", "none (unshaped)", "tcg"
		vms.Files, vms.SmallFiles, vms.FileBytes = 80, 10, 8<<20
		r.Figures = append(r.Figures, vms)
	}
	var b bytes.Buffer
	if err := r.WriteNFSReport(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	netns, vms, ok := strings.Cut(md, "## vms, link none")
	if !ok {
		t.Fatalf("report has no vms section:\n%s", md)
	}
	const note = "The guest's clock is QEMU's instruction counter (-icount)"
	if strings.Count(netns, note) != 1 || !strings.Contains(netns, "Times, rates and CPU seconds here count the instructions") {
		t.Errorf("the netns section does not say once that its clock counts instructions:\n%s", netns)
	}
	if strings.Contains(vms, note) {
		t.Errorf("the vms section, on the host's clock, says its clock counts instructions:\n%s", vms)
	}
	if !strings.Contains(md, "2 CPUs, tcg+icount (netns), tcg (vms). NBD:") {
		t.Errorf("the header does not name each topology's clock:\n%s", md)
	}
	if !strings.Contains(netns, "A tree of 400 files, 50 small files, a 16 MiB file.") || !strings.Contains(vms, "A tree of 80 files, 10 small files, a 8 MiB file.") {
		t.Errorf("a section does not give its own sizes:\n%s", md)
	}
}

func TestNBDRatioWithoutDurableNFS(t *testing.T) {
	r := fixture()
	var kept []Figure
	for _, f := range r.Figures {
		if f.Target != "nfs4.2-sync" {
			kept = append(kept, f)
		}
	}
	r.Figures = kept
	var b bytes.Buffer
	r.WriteNFSReport(&b)
	// Only an async NFS is left: no ratio rather than one against it.
	if !strings.Contains(b.String(), "| untar | s | 3.00 (2-4) | 1.00 (1-1) | - |") {
		t.Errorf("want no verdict without a durable NFS target:\n%s", b.String())
	}
}

func TestResultsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "results.json")
	want := fixture()
	if err := want.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	got, err := ReadResults(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Figures) != len(want.Figures) || got.Figures[3] != want.Figures[3] || !got.Started.Equal(want.Started) {
		t.Errorf("read back %+v, want %+v", got, want)
	}
}

func TestReadResultsRejects(t *testing.T) {
	for name, body := range map[string]string{
		"not json":    "figures: 3",
		"no workload": `{"kind":"nfs","figures":[{"target":"nbd","unit":"s","value":1}]}`,
		"no unit":     `{"kind":"nfs","figures":[{"target":"nbd","workload":"untar","value":1}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "results.json")
			os.WriteFile(path, []byte(body), 0o644)
			if _, err := ReadResults(path); err == nil {
				t.Errorf("ReadResults accepted %q", body)
			}
		})
	}
}

func TestWriteOutputs(t *testing.T) {
	dir := t.TempDir()
	r := fixture()
	if err := r.WriteOutputs(dir); err != nil {
		t.Fatal(err)
	}
	files := r.Outputs(dir)
	if len(files) != 4 {
		t.Fatalf("outputs %v, want results.json, report.md, a PNG and an SVG", files)
	}
	magic := map[string]string{".png": "\x89PNG", ".svg": "<?xml", ".md": "# NBD against NFS", ".json": "{"}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte(magic[filepath.Ext(f)])) {
			t.Errorf("%s starts %q", f, b[:min(len(b), 16)])
		}
	}
	svg, _ := os.ReadFile(filepath.Join(dir, "nfs-netns-wan.svg"))
	for _, label := range []string{"speed relative to NBD", "untar", "nfs4.2-async*", "workload"} {
		if !bytes.Contains(svg, []byte(label)) {
			t.Errorf("the plot lacks the label %q", label)
		}
	}
}

func TestRelativeToNBD(t *testing.T) {
	tb := fixture().table()
	s := setup{"netns", "wan"}
	for _, tc := range []struct {
		wl, tg string
		want   float64
	}{
		{"untar", "nbd", 1},
		{"untar", "nfs4.2-sync", 0.25}, // 4x slower
		{"untar", "nfs4.2-async", 3},
		{"seq-write", "nfs4.2-sync", 2},
		{"seq-write", "nfs3-sync", 0}, // not measured
	} {
		if got := relativeToNBD(tb, s, tc.wl, tc.tg); got != tc.want {
			t.Errorf("relativeToNBD(%s, %s) = %g, want %g", tc.wl, tc.tg, got, tc.want)
		}
	}
}

func TestParseSetup(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"netns/none", true}, {"vms/wan", true}, {"netns/lan", true},
		{"netns", false}, {"vm/none", false}, {"netns/dsl", false}, {"", false},
	} {
		if _, err := parseSetup(tc.in); (err == nil) != tc.ok {
			t.Errorf("parseSetup(%q): %v, want ok %v", tc.in, err, tc.ok)
		}
	}
}

func TestMakeTree(t *testing.T) {
	src := t.TempDir()
	for _, f := range []string{"a/1.go", "a/2.go", "b/c/3.go", "d.go"} {
		os.MkdirAll(filepath.Join(src, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(src, f), []byte(f), 0o644)
	}
	dst := filepath.Join(t.TempDir(), "tree.tar")
	size, err := MakeTree(dst, src, 3)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(dst)
	defer f.Close()
	tr := tar.NewReader(f)
	var files []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			files = append(files, h.Name)
		}
	}
	want := []string{"tree/a/1.go", "tree/a/2.go", "tree/b/c/3.go"}
	if strings.Join(files, " ") != strings.Join(want, " ") || size != 6+6+8 {
		t.Errorf("tree holds %v (%d bytes), want %v (20 bytes)", files, size, want)
	}
	if _, err := MakeTree(dst, src, 5); err == nil || !strings.Contains(err.Error(), "only 4 files") {
		t.Errorf("a tree larger than its source: %v", err)
	}
}
