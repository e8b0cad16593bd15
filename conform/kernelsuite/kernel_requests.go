package kernelsuite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/kernel"
)

// The kernel's requests checked from the server's side: nbdlab serve
// records every request it reads (--record), and the checkers below
// hold them to the specification's rules for a client.

// exportFacts is what the handshake told the client, which bounds what it
// may send.
type exportFacts struct {
	Size       uint64
	Block      uint32 // the device's logical block size
	MaxPayload uint32
	Flags      nbd.TransmissionFlags
}

// checkRules holds every request to the rules for a client: in bounds,
// aligned to the block size, at most the maximum payload, commands and
// flags only as advertised, nothing after NBD_CMD_DISC on a connection.
func checkRules(reqs []nbd.Recorded, f exportFacts) error {
	var errs []error
	bad := func(r nbd.Recorded, format string, a ...any) {
		if len(errs) < 10 {
			errs = append(errs, fmt.Errorf("conn %d %s %s offset %d length %d: %s", r.Conn, r.Cmd, r.Flags, r.Offset, r.Length, fmt.Sprintf(format, a...)))
		}
	}
	advertised := map[string]nbd.TransmissionFlags{
		"NBD_CMD_FLUSH": nbd.FlagSendFlush, "NBD_CMD_TRIM": nbd.FlagSendTrim,
		"NBD_CMD_WRITE_ZEROES": nbd.FlagSendWriteZeroes, "NBD_CMD_CACHE": nbd.FlagSendCache,
	}
	disc := map[uint64]bool{}
	for _, r := range reqs {
		if disc[r.Conn] {
			bad(r, "sent after NBD_CMD_DISC on the same connection")
		}
		switch r.Cmd {
		case "NBD_CMD_DISC":
			disc[r.Conn] = true
			continue
		case "NBD_CMD_FLUSH":
			if r.Offset != 0 || r.Length != 0 || r.Flags != "" {
				bad(r, "a flush carries no offset, length or flags")
			}
		}
		if flag, ok := advertised[r.Cmd]; ok && f.Flags&flag == 0 {
			bad(r, "the server did not advertise %s", flag)
		}
		if strings.Contains(r.Flags, "FUA") && f.Flags&nbd.FlagSendFUA == 0 {
			bad(r, "FUA without NBD_FLAG_SEND_FUA")
		}
		if strings.Contains(r.Flags, "NO_HOLE") && r.Cmd != "NBD_CMD_WRITE_ZEROES" {
			bad(r, "NO_HOLE on a command other than WRITE_ZEROES")
		}
		if r.Cmd == "NBD_CMD_FLUSH" {
			continue
		}
		if r.Offset+uint64(r.Length) > f.Size {
			bad(r, "past the end of the %d-byte export", f.Size)
		}
		if b := uint64(f.Block); b > 1 && (r.Offset%b != 0 || uint64(r.Length)%b != 0) {
			bad(r, "not aligned to the %d-byte block size", f.Block)
		}
		if (r.Cmd == "NBD_CMD_WRITE" || r.Cmd == "NBD_CMD_READ") && r.Length > f.MaxPayload {
			bad(r, "more than the %d-byte maximum payload", f.MaxPayload)
		}
	}
	return errors.Join(errs...)
}

// wantRequest fails unless a request of cmd (with flag, if not "") is in
// reqs.
func wantRequest(reqs []nbd.Recorded, cmd, flag, after string) error {
	for _, r := range reqs {
		if r.Cmd == cmd && (flag == "" || strings.Contains(r.Flags, flag)) {
			return nil
		}
	}
	what := cmd
	if flag != "" {
		what += " with " + flag
	}
	var seen []string
	counts := map[string]int{}
	for _, r := range reqs {
		k := r.Cmd
		if r.Flags != "" {
			k += "+" + r.Flags
		}
		if counts[k] == 0 {
			seen = append(seen, k)
		}
		counts[k]++
	}
	var list []string
	for _, k := range seen {
		list = append(list, fmt.Sprintf("%s x%d", k, counts[k]))
	}
	return fmt.Errorf("%s sent no %s; the server saw: %s", after, what, strings.Join(list, ", "))
}

// discLast fails unless every connection in reqs ended with one DISC.
func discLast(reqs []nbd.Recorded) error {
	last := map[uint64]string{}
	var conns []uint64
	for _, r := range reqs {
		if _, ok := last[r.Conn]; !ok {
			conns = append(conns, r.Conn)
		}
		last[r.Conn] = r.Cmd
	}
	for _, c := range conns {
		if last[c] != "NBD_CMD_DISC" {
			return fmt.Errorf("connection %d ended with %s, not NBD_CMD_DISC", c, last[c])
		}
	}
	if len(conns) == 0 {
		return errors.New("no requests recorded")
	}
	return nil
}

// exercise attaches with conns connections, runs do on the device,
// disconnects, and returns the requests the server read meanwhile, with
// what the kernel was told.
func (e *kenv) exercise(conns int, do func(dev string) error) ([]nbd.Recorded, exportFacts, error) {
	mark := e.srv.recordMark()
	if mark < 0 {
		return nil, exportFacts{}, notApplicable("needs a server that records the requests it reads (nbdlab serve --record)")
	}
	a, err := e.attach(kernel.AttachOptions{Connections: conns})
	if err != nil {
		return nil, exportFacts{}, err
	}
	f := exportFacts{Size: uint64(a.Info.Size), Block: max(a.Info.MinBlock, 512), MaxPayload: a.Info.MaxBlock, Flags: a.Info.Flags}
	if f.MaxPayload == 0 {
		f.MaxPayload = 32 << 20 // the specification's default
	}
	if err := do(a.Path); err != nil {
		return nil, f, err
	}
	// Where udevd runs, its probe of the new device (blkid's reads) is
	// let finish first: these cases check what the kernel sends for the
	// workload and the disconnect, not a prober's reads racing them
	// (udev/probe-race meets that). On 6.1 one connection's last request
	// was such a READ, not NBD_CMD_DISC.
	settleUdev(e.ctx)
	if err := e.detach(a); err != nil {
		return nil, f, err
	}
	// DISC reaches the server just after the device is free.
	var reqs []nbd.Recorded
	waitFor(e.ctx, 10*time.Second, func() bool {
		reqs, err = e.srv.recordedSince(mark)
		return err == nil && discLast(reqs) == nil
	})
	return reqs, f, err
}

func requestCases() []kernelCase {
	return []kernelCase{
		{id: "requests/rules", what: "every request the kernel sends under fio (4 connections where allowed) is in bounds, block-aligned, within the maximum payload, with only advertised commands and flags", run: caseRules, timeout: 4 * time.Minute},
		{id: "requests/flush-on-fsync", what: "fsync of the device sends NBD_CMD_FLUSH", run: func(e *kenv) error {
			return e.expect(nbd.FlagSendFlush, "NBD_CMD_FLUSH", "", "fsync", func(dev string) error { return writeSync(dev, 0) })
		}},
		{id: "requests/fua-on-dsync", what: "an O_DSYNC write sends NBD_CMD_WRITE with FUA when the server advertises FUA", run: func(e *kenv) error {
			return e.expect(nbd.FlagSendFUA, "NBD_CMD_WRITE", "FUA", "an O_DSYNC write", func(dev string) error { return writeSync(dev, syscall.O_DSYNC|syscall.O_DIRECT) })
		}},
		{id: "requests/trim-on-discard", what: "blkdiscard sends NBD_CMD_TRIM when the server advertises it", run: func(e *kenv) error {
			return e.expect(nbd.FlagSendTrim, "NBD_CMD_TRIM", "", "blkdiscard", func(dev string) error {
				if err := kernelSends(dev, "discard_max_bytes", "NBD_CMD_TRIM"); err != nil {
					return err
				}
				_, err := run(e.ctx, "blkdiscard", "-o", "1048576", "-l", "4194304", dev)
				return err
			})
		}},
		{id: "requests/zeroes-on-discard-z", what: "blkdiscard -z sends NBD_CMD_WRITE_ZEROES when the server advertises it", run: func(e *kenv) error {
			return e.expect(nbd.FlagSendWriteZeroes, "NBD_CMD_WRITE_ZEROES", "", "blkdiscard -z", func(dev string) error {
				if err := kernelSends(dev, "write_zeroes_max_bytes", "NBD_CMD_WRITE_ZEROES"); err != nil {
					return err
				}
				_, err := run(e.ctx, "blkdiscard", "-z", "-o", "1048576", "-l", "4194304", dev)
				return err
			})
		}},
		{id: "requests/disc-last", what: "disconnect sends NBD_CMD_DISC on every connection, and nothing after it", run: func(e *kenv) error {
			reqs, _, err := e.exercise(1, func(dev string) error { return roundTrip(e.ctx, dev, 3) })
			if err != nil {
				return err
			}
			return discLast(reqs)
		}},
	}
}

// expect runs do and wants cmd (with flag) among the requests, where the
// server advertises need.
func (e *kenv) expect(need nbd.TransmissionFlags, cmd, flag, what string, do func(dev string) error) error {
	if e.srv.Flags&need == 0 {
		return notApplicable(fmt.Sprintf("the server does not advertise %s", need))
	}
	reqs, f, err := e.exercise(1, do)
	if err != nil {
		return err
	}
	if err := checkRules(reqs, f); err != nil {
		return err
	}
	return wantRequest(reqs, cmd, flag, what)
}

// kernelSends returns notApplicable when the device's queue limit attr
// is 0: this kernel's nbd driver does not send cmd (6.1 sends no
// WRITE_ZEROES).
func kernelSends(dev, attr, cmd string) error {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "queue", attr))
	if err == nil && strings.TrimSpace(string(b)) == "0" {
		return notApplicable(fmt.Sprintf("this kernel's nbd driver does not send %s (queue/%s is 0)", cmd, attr))
	}
	return nil
}

// writeSync writes a block with flags and fsyncs it.
func writeSync(dev string, flags int) error {
	f, err := os.OpenFile(dev, os.O_WRONLY|flags, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(aligned(4096, 9), 1<<20); err != nil {
		return err
	}
	return f.Sync()
}

func caseRules(e *kenv) error {
	conns := 4
	if e.srv.Flags&nbd.FlagCanMultiConn == 0 {
		conns = 1
	}
	reqs, f, err := e.exercise(conns, func(dev string) error {
		if err := fioVerify(e.ctx, dev, 1, true, "16M"); err != nil {
			return err
		}
		if err := fioVerify(e.ctx, dev, 1, false, "8M"); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
		defer cancel()
		run(ctx, "blkdiscard", "-o", "0", "-l", "8388608", dev)
		return nil
	})
	if err != nil {
		return err
	}
	if len(reqs) < 100 {
		return fmt.Errorf("only %d requests recorded under fio; the record is not working", len(reqs))
	}
	return checkRules(reqs, f)
}

// settleUdev waits for udevd, where it runs, to finish with the events it
// has (udevadm settle); without udevd it returns at once.
func settleUdev(ctx context.Context) {
	if exists("/run/udev/control") {
		run(ctx, "udevadm", "settle", "--timeout=30")
	}
}
