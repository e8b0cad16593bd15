package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/internal/testenv"
)

// describe reaches every command and verb of the table, and every flag
// help shows ends up in the man page, the completions and the README.
func TestDocsCoverEveryFlag(t *testing.T) {
	cmds := describe()
	seen := map[string]bool{}
	for _, c := range cmds {
		seen[strings.Fields(c.name + " x")[0]] = true
	}
	for _, c := range commands() {
		if c.name != "docs" && !seen[c.name] {
			t.Errorf("describe did not reach %q", c.name)
		}
	}
	var man, bash, zsh bytes.Buffer
	if err := writeMan(&man, cmds); err != nil {
		t.Fatal(err)
	}
	writeCompletion(&bash, cmds, shells["bash"])
	writeCompletion(&zsh, cmds, shells["zsh"])
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]bool{}
	for _, c := range cmds {
		for _, f := range c.flags {
			flags[c.name+" "+dashed(f)] = true
		}
	}
	for _, want := range []string{"attach --snapshot", "serve --inetd", "conform --repeat", "conform server --patience", "kernel fetch --mirror", "vm run --share"} {
		if !flags[want] {
			t.Errorf("describe did not record %s (recorded %d flags)", want, len(flags))
		}
	}
	for _, c := range cmds {
		for _, f := range c.flags {
			flag := dashed(f)
			if !strings.Contains(man.String(), roff(flag)) {
				t.Errorf("man page lacks %s of %s", flag, c.name)
			}
			if !strings.Contains(bash.String(), flag) || !strings.Contains(zsh.String(), flag) {
				t.Errorf("completions lack %s of %s", flag, c.name)
			}
			if !mentions(string(readme), flag) {
				t.Errorf("README does not mention %s of nbdlab %s", flag, c.name)
			}
		}
	}
}

// The generated files are well formed: bash parses the completion, groff
// formats the man page without a warning.
func TestDocsAreWellFormed(t *testing.T) {
	testenv.Need(t, "bash", "groff")
	cmds := describe()
	var man, bash bytes.Buffer
	writeMan(&man, cmds)
	writeCompletion(&bash, cmds, shells["bash"])
	completion := bash.String()
	sh := exec.Command("bash", "-n")
	sh.Stdin = strings.NewReader(completion)
	if out, err := sh.CombinedOutput(); err != nil {
		t.Errorf("bash -n: %v\n%s", err, out)
	}
	g := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	g.Stdin = &man
	if out, err := g.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("groff: %v\n%s", err, out)
	}
	// And the completion completes: a command's flags after it.
	script := completion + `
COMP_WORDS=(nbdlab attach --sn); COMP_CWORD=2; _nbdlab; echo "${COMPREPLY[@]}"
COMP_WORDS=(nbdlab kernel f); COMP_CWORD=2; _nbdlab; echo "${COMPREPLY[@]}"
COMP_WORDS=(nbdlab conform server --pat); COMP_CWORD=3; _nbdlab; echo "${COMPREPLY[@]}"`
	out, err := exec.Command("bash", "-c", script).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "--snapshot\nfetch\n--patience" {
		t.Errorf("completion: %v\n%s", err, out)
	}
}

// mentions reports whether text names flag as a flag: followed by a
// space, a backtick, "]" or "=", not as the start of a longer one.
func mentions(text, flag string) bool {
	for _, end := range []string{" ", "`", "]", "=", ","} {
		if strings.Contains(text, flag+end) {
			return true
		}
	}
	return false
}
