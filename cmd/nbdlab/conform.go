package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/conform"
)

const conformServerUsage = "server [--list] [--run REGEX] [--patience D] [--json FILE] [--markdown FILE] [--junit FILE] [NAME=]URI..."

func runConform(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if err := verb(args, "conform", "server", conformServerUsage, stdout); err != nil {
		return err
	}
	fs := newFlagSet("conform server", conformServerUsage, stderr)
	run := fs.String("run", "", "only the checks whose ID matches `REGEX` (see --list)")
	list := fs.Bool("list", false, "list the checks and exit")
	patience := fs.Duration("patience", 30*time.Second, "how long the defence checks wait, and load the server")
	jsonOut := fs.String("json", "", "write the report as JSON to `FILE`")
	mdOut := fs.String("markdown", "", "write the matrix as Markdown to `FILE`")
	junitOut := fs.String("junit", "", "write the report as JUnit XML to `FILE`")
	pos, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	if *list {
		for _, c := range conform.Checks() {
			fmt.Fprintf(stdout, "%-42s %-6s %s\n", c.ID, c.Level, c.What)
		}
		return nil
	}
	if len(pos) == 0 {
		return usagef("want at least one NBD URI")
	}
	o := conform.Options{Patience: *patience, Progress: func(target string, r conform.Result) {
		fmt.Fprintf(stderr, "%s %s: %s\n", target, r.ID, r.Status)
	}}
	if *run != "" {
		re, err := regexp.Compile(*run)
		if err != nil {
			return usagef("--run: %v", err)
		}
		o.Run = re.MatchString
	}
	var servers []conform.Server
	for _, a := range pos {
		s := conform.Server{URI: a}
		if name, uri, ok := strings.Cut(a, "="); ok && !strings.Contains(name, ":") {
			s = conform.Server{Name: name, URI: uri}
		}
		servers = append(servers, s)
	}
	r, err := conform.CheckServers(ctx, servers, o)
	if err != nil {
		return err
	}
	if err := r.WriteMatrix(stdout); err != nil {
		return err
	}
	for _, out := range []struct {
		file  string
		write func(io.Writer) error
	}{{*jsonOut, r.WriteJSON}, {*mdOut, r.WriteMarkdown}, {*junitOut, r.WriteJUnit}} {
		if out.file != "" {
			if err := conform.WriteFile(out.file, out.write); err != nil {
				return err
			}
		}
	}
	if n := r.MustFailures(); n > 0 {
		return exitError{code: 1, err: fmt.Errorf("%d MUST violations", n)}
	}
	return nil
}
