package debian

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// Stanza is one paragraph of a deb822 file (a Release, one package of a
// Packages index): field name to value, continuation lines joined with
// newlines and their leading space removed.
type Stanza map[string]string

// maxLine bounds one line of an index; the longest real ones (Depends of
// metapackages, Description) are a few KiB.
const maxLine = 1 << 20

// ParseStanzas calls fn for each stanza of r, in order.
func ParseStanzas(r io.Reader, fn func(Stanza) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	cur := Stanza{}
	last := ""
	line := 0
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		err := fn(cur)
		cur, last = Stanza{}, ""
		return err
	}
	for sc.Scan() {
		line++
		l := sc.Text()
		switch {
		case strings.TrimSpace(l) == "":
			if err := flush(); err != nil {
				return err
			}
		case l[0] == ' ' || l[0] == '\t':
			if last == "" {
				return fmt.Errorf("debian: line %d: continuation line outside a field", line)
			}
			cur[last] += "\n" + strings.TrimSpace(l)
		case l[0] == '#':
		default:
			k, v, ok := strings.Cut(l, ":")
			if !ok || k == "" {
				return fmt.Errorf("debian: line %d: %q is neither a field nor a continuation", line, trim(l))
			}
			last = k
			cur[k] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("debian: line %d: %w", line+1, err)
	}
	return flush()
}

func trim(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// Dep is one alternative of a dependency: a package name and, if given,
// the version relation (=, >=, <<, ...) and version.
type Dep struct {
	Name, Rel, Version string
}

// ParseDepends splits a Depends field into its comma-separated entries,
// each a list of |-separated alternatives. Architecture qualifiers
// (":any") are dropped.
func ParseDepends(s string) [][]Dep {
	var out [][]Dep
	for _, entry := range strings.Split(s, ",") {
		var alts []Dep
		for _, alt := range strings.Split(entry, "|") {
			alt = strings.TrimSpace(alt)
			if alt == "" {
				continue
			}
			var d Dep
			name, rest, _ := strings.Cut(alt, "(")
			d.Name = strings.TrimSpace(name)
			if i := strings.IndexAny(d.Name, ": ["); i >= 0 {
				d.Name = d.Name[:i]
			}
			if rest != "" {
				rel := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), ")"))
				i := strings.IndexFunc(rel, func(r rune) bool { return !strings.ContainsRune("<>=", r) })
				if i > 0 {
					d.Rel, d.Version = rel[:i], strings.TrimSpace(rel[i:])
				}
			}
			alts = append(alts, d)
		}
		if len(alts) > 0 {
			out = append(out, alts)
		}
	}
	return out
}
