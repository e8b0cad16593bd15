package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// The man page and the shell completions are made from the command
// table and from each command's own flag set, which a run records
// instead of parsing (describing), so that help, completion and the man
// page cannot drift apart.

// described is one command's flag set as its run made it.
type described struct {
	name, usage string
	flags       []*flag.Flag // the ones help shows
}

type describer struct {
	cmds []described
	sets []*flag.FlagSet // cmds[i]'s, whose flags are defined after add
}

func (d *describer) add(name, usage string, fs *flag.FlagSet) {
	d.cmds = append(d.cmds, described{name: name, usage: usage})
	d.sets = append(d.sets, fs)
}

// describing, when set, collects flag sets; parseFlags then returns
// errDescribed at once, before a command does anything.
var describing *describer

var errDescribed = errors.New("described")

// describe runs every command and verb far enough to record its flags.
func describe() []described {
	describing = &describer{}
	defer func() { describing = nil }()
	for _, c := range commands() {
		if c.name == "docs" {
			continue // it describes the others
		}
		verbs := c.verbs
		if len(verbs) == 0 {
			verbs = []string{""}
		}
		for _, v := range verbs {
			var args []string
			if v != "" {
				args = []string{v}
			}
			c.run(withCommand(context.Background(), c.name), args, io.Discard, io.Discard)
		}
	}
	for i, fs := range describing.sets {
		fs.VisitAll(func(f *flag.Flag) {
			if !strings.HasPrefix(f.Usage, internalFlag) {
				describing.cmds[i].flags = append(describing.cmds[i].flags, f)
			}
		})
	}
	return describing.cmds
}

const docsUsage = "man | completion bash|zsh"

// runDocs prints the man page or a shell completion script.
func runDocs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) == 1 && args[0] == "man":
		return writeMan(stdout, describe())
	case len(args) == 2 && args[0] == "completion" && shells[args[1]].head != "":
		return writeCompletion(stdout, describe(), shells[args[1]])
	case len(args) == 1 && (args[0] == "-h" || args[0] == "--help"):
		fmt.Fprintf(stdout, "usage: nbdlab docs %s\n\nman: the man page (roff; nbdlab docs man > nbdlab.1)\ncompletion: a shell completion script (source <(nbdlab docs completion bash))\n", docsUsage)
		return flag.ErrHelp
	}
	return usagef("want 'docs man', 'docs completion bash' or 'docs completion zsh'")
}

// roff escapes text for a man page.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// dashed is how a flag is written: -v for one letter, --name otherwise.
func dashed(f *flag.Flag) string {
	if len(f.Name) == 1 {
		return "-" + f.Name
	}
	return "--" + f.Name
}

func flagName(f *flag.Flag) string {
	name, _ := flag.UnquoteUsage(f)
	if name != "" {
		return dashed(f) + " " + name
	}
	return dashed(f)
}

func writeMan(w io.Writer, cmds []described) error {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH NBDLAB 1 %q \"nbdlab\" \"User Commands\"\n", time.Now().UTC().Format("2006-01-02"))
	b.WriteString(".SH NAME\nnbdlab \\- serve, attach, build and test the Linux Network Block Device\n")
	b.WriteString(".SH SYNOPSIS\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, ".B nbdlab %s\n", roff(c.name))
		if c.usage != "" {
			b.WriteString(roff(c.usage) + "\n")
		}
		b.WriteString(".br\n")
	}
	b.WriteString(".SH DESCRIPTION\nnbdlab serves disk images over NBD, attaches them to /dev/nbdN through the kernel, builds nbd.ko for kernels that lack it, and checks and measures the kernel's client and NBD servers in lab VMs.\n")
	b.WriteString(".SH COMMANDS\n")
	summaries := map[string]string{}
	for _, c := range commands() {
		summaries[c.name] = c.summary
	}
	for _, c := range cmds {
		fmt.Fprintf(&b, ".SS nbdlab %s\n", roff(c.name))
		if s, ok := summaries[c.name]; ok {
			b.WriteString(roff(s) + "\n")
		}
		for _, f := range c.flags {
			fmt.Fprintf(&b, ".TP\n.B %s\n%s", roff(flagName(f)), roff(strings.ReplaceAll(f.Usage, "`", "")))
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
				fmt.Fprintf(&b, " (default %s)", roff(f.DefValue))
			}
			b.WriteString("\n")
		}
	}
	b.WriteString(".SH EXIT STATUS\n0 on success, 1 on failure, 2 for a mistake in the command line.\n")
	b.WriteString(".SH FILES\n.TP\n/run/nbdlab\nwhat is attached, and the logs of the processes that hold devices\n.TP\n~/.cache/nbdlab\nfetched kernels and built modules\n")
	b.WriteString(".SH SEE ALSO\n.BR nbd-client (8),\n.BR nbd-server (1),\n.BR nbdkit (1),\n.BR qemu-nbd (8),\n.BR nbdinfo (1)\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// completionWords is what follows each command (and verb): its verbs, or
// its flags.
func completionWords(cmds []described) (top []string, next map[string][]string) {
	next = map[string][]string{}
	for _, c := range commands() {
		top = append(top, c.name)
		for _, v := range c.verbs {
			if v != "" {
				next[c.name] = append(next[c.name], v)
			}
		}
	}
	top = append(top, "help")
	next["docs"] = []string{"man", "completion"}
	for _, c := range cmds {
		for _, f := range c.flags {
			next[c.name] = append(next[c.name], dashed(f))
		}
	}
	for k := range next {
		sort.Strings(next[k])
	}
	return top, next
}

// shell is how one shell's completion script is written around the
// words: its head, how it offers the first word, one case arm, its tail.
type shell struct {
	head, first, arm, tail string
}

var shells = map[string]shell{
	"bash": {
		head: "# bash completion for nbdlab: source <(nbdlab docs completion bash)\n_nbdlab() {\n" +
			"  local cur=${COMP_WORDS[COMP_CWORD]} key=${COMP_WORDS[1]}\n" +
			"  if [ \"$COMP_CWORD\" -ge 3 ] && [[ ${COMP_WORDS[2]} != -* ]]; then key=\"${COMP_WORDS[1]} ${COMP_WORDS[2]}\"; fi\n",
		first: "  if [ \"$COMP_CWORD\" -eq 1 ]; then COMPREPLY=($(compgen -W \"%s\" -- \"$cur\")); return; fi\n  case $key in\n",
		arm:   "    %q) COMPREPLY=($(compgen -W \"%s\" -- \"$cur\")) ;;\n",
		tail: "    *) COMPREPLY=($(compgen -f -- \"$cur\")) ;;\n  esac\n" +
			"  [ ${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -f -- \"$cur\"))\n}\ncomplete -F _nbdlab nbdlab\n",
	},
	"zsh": {
		head: "#compdef nbdlab\n# zsh completion for nbdlab: nbdlab docs completion zsh > ~/.zfunc/_nbdlab\n_nbdlab() {\n" +
			"  local key=${words[2]}\n  if (( CURRENT >= 4 )) && [[ ${words[3]} != -* ]]; then key=\"${words[2]} ${words[3]}\"; fi\n",
		first: "  if (( CURRENT == 2 )); then compadd -- %s; return; fi\n  case $key in\n",
		arm:   "    %q) compadd -- %s; _files ;;\n",
		tail:  "    *) _files ;;\n  esac\n}\ncompdef _nbdlab nbdlab\n",
	},
}

// writeCompletion writes the completion script for sh.
func writeCompletion(w io.Writer, cmds []described, sh shell) error {
	top, next := completionWords(cmds)
	var b strings.Builder
	b.WriteString(sh.head)
	fmt.Fprintf(&b, sh.first, strings.Join(top, " "))
	keys := make([]string, 0, len(next))
	for k := range next {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, sh.arm, k, strings.Join(next[k], " "))
	}
	b.WriteString(sh.tail)
	_, err := io.WriteString(w, b.String())
	return err
}
