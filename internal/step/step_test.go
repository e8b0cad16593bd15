package step

import (
	"bytes"
	"errors"
	"regexp"
	"testing"
)

func TestPrinter(t *testing.T) {
	var out bytes.Buffer
	p := New(&out, 2)
	if err := p.Do("first", func() error {
		p.Printf("detail %d", 1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cause := errors.New("disk full")
	err := p.Do("second", func() error { return cause })
	if !errors.Is(err, cause) || err.Error() != "second: disk full" {
		t.Fatalf("err = %v, want the step's name before the cause, which it wraps", err)
	}
	want := `^\[1/2\] first
      detail 1
      ok \(\d+(\.\d+)?[µnm]?s\)
\[2/2\] second
      FAILED after \d+(\.\d+)?[µnm]?s: disk full
$`
	if !regexp.MustCompile(want).MatchString(out.String()) {
		t.Fatalf("printed:\n%s\nwant to match:\n%s", out.String(), want)
	}
	if len(p.Steps) != 2 || p.Steps[0].Err != nil || p.Steps[1].Err != cause {
		t.Fatalf("steps %+v", p.Steps)
	}
}

func TestIndented(t *testing.T) {
	var out bytes.Buffer
	w := Indented(&out)
	w.Write([]byte("a\nb"))
	w.Write([]byte("c\n\nd\n"))
	if want := Indent + "a\n" + Indent + "bc\n" + Indent + "\n" + Indent + "d\n"; out.String() != want {
		t.Fatalf("got %q, want %q", out.String(), want)
	}
}
