package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFilesAndRead(t *testing.T) {
	r := &Report{Kind: "server", Checks: []CheckInfo{{ID: "a", Level: Must, What: "a thing"}},
		Targets: []Target{{Name: "srv", URI: "nbd://192.0.2.1/d", Results: []Result{{ID: "a", Level: Must, Status: Fail, Detail: "broke"}}}}}
	dir := t.TempDir()
	if err := r.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	back, err := Read(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if back.MustFailures() != 1 || back.Targets[0].Results[0].Detail != "broke" {
		t.Errorf("read back %+v", back)
	}
	for _, name := range []string{"report.md", "junit.xml"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !strings.Contains(string(b), "broke") {
			t.Errorf("%s: %v, without the failure's detail:\n%s", name, err, b)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct{ name, json, want string }{
		{"not json", "{", "report"},
		{"short target", `{"checks":[{"id":"a"},{"id":"b"}],"targets":[{"name":"t","results":[{"id":"a"}]}]}`, "1 results for 2 checks"},
	} {
		if _, err := Decode(strings.NewReader(tc.json)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one saying %q", tc.name, err, tc.want)
		}
	}
}
