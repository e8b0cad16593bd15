package cpio_test

import (
	"bytes"
	"testing"

	"github.com/nbdlab/nbdlab/cpio"
)

func TestRoundTrip(t *testing.T) {
	files := []cpio.File{
		{Name: "init", Mode: cpio.ModeRegular | 0o755, Data: []byte("#!/bin/true\n")},
		{Name: "dev", Mode: cpio.ModeDir | 0o755},
		{Name: "modules/a.ko", Mode: cpio.ModeRegular | 0o644, Data: bytes.Repeat([]byte{7}, 5)},
	}
	var a, b bytes.Buffer
	if err := cpio.Write(&a, files); err != nil {
		t.Fatal(err)
	}
	cpio.Write(&b, []cpio.File{files[2], files[0], files[1]})
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("archive depends on input order; want reproducible bytes")
	}
	if a.Len()%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", a.Len())
	}
	got, err := cpio.Read(&a)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Name != "dev" || string(got[1].Data) != "#!/bin/true\n" || got[2].Mode != cpio.ModeRegular|0o644 {
		t.Fatalf("round trip: %+v", got)
	}
}

func FuzzRead(f *testing.F) {
	var seed bytes.Buffer
	cpio.Write(&seed, []cpio.File{{Name: "x", Mode: cpio.ModeRegular | 0o644, Data: []byte("abc")}})
	f.Add(seed.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		files, err := cpio.Read(bytes.NewReader(data))
		if err != nil {
			return
		}
		// What reads must write and read back the same.
		var out bytes.Buffer
		if err := cpio.Write(&out, files); err != nil {
			return // names the writer refuses, such as absolute ones
		}
		again, err := cpio.Read(&out)
		if err != nil || len(again) != len(files) {
			t.Fatalf("re-read: %v, %d files, want %d", err, len(again), len(files))
		}
	})
}
