package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/kernel"
	"github.com/nbdlab/nbdlab/nbd/kernel/hold"
)

const (
	connectUsage = "DEVICE|any URI [--connections N] [--timeout D] [--dead-timeout D] [--persist] [--read-only] [--block-size B] [--interface auto|netlink|ioctl]"
	attachUsage  = "[--device DEVICE|any] [--read-only] [--snapshot] [--force-share] [--format raw|qcow2] [--offset N] [--size N] [--connections N] [DEVICE] IMAGE"
)

// attachFlags are the flags connect and attach share.
type attachFlags struct {
	kernel.AttachOptions
	persist bool
}

func (f *attachFlags) register(fs *flag.FlagSet) {
	f.Interface = kernel.InterfaceAuto
	fs.IntVar(&f.Connections, "connections", 1, "connections to the server (more than 1 needs NBD_FLAG_CAN_MULTI_CONN)")
	fs.DurationVar(&f.Timeout, "timeout", 0, "fail a request the server has not answered in this long with EIO (default none: a request to a stalled server waits for ever, the kernel logging \"Possible stuck request\" every 30s, as with nbd-client and qemu-nbd)")
	fs.DurationVar(&f.DeadTimeout, "dead-timeout", 0, "how long I/O waits for a dead connection to be replaced before failing with EIO (default: at once; 2m with --persist)")
	fs.BoolVar(&f.ReadOnly, "read-only", false, "attach read-only")
	fs.Uint64Var(&f.BlockSize, "block-size", 0, "logical block size, 512 to 4096 (default: 512, or the export's minimum)")
	fs.Var(&f.Interface, "interface", "kernel interface: netlink, ioctl, or auto (netlink, else ioctl)")
}

// persistDeadTimeout is how long --persist keeps I/O waiting for the
// server to come back, unless --dead-timeout says otherwise: without one
// the kernel fails every request the moment the connection dies, before
// anything can reconnect.
const persistDeadTimeout = 2 * time.Minute

// attach runs a hold request and prints the device, as connect and
// attach do in the foreground.
func attach(ctx context.Context, stdout, stderr io.Writer, f attachFlags, r hold.Request) error {
	f.Logf = func(format string, a ...any) { fmt.Fprintf(stderr, "nbdlab: "+format+"\n", a...) }
	if f.persist {
		if f.Interface == kernel.InterfaceIoctl {
			return usagef("--persist reconnects through netlink (NBD_CMD_RECONFIGURE): drop --interface ioctl")
		}
		if f.DeadTimeout == 0 {
			f.DeadTimeout = persistDeadTimeout
		}
	}
	r.Options, r.Persist = f.AttachOptions, f.persist
	dev, err := hold.Attach(ctx, r)
	if dev != "" {
		fmt.Fprintln(stdout, dev)
	}
	return err
}

func runConnect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("connect", connectUsage, stderr)
	var f attachFlags
	f.register(fs)
	fs.BoolVar(&f.persist, "persist", false, "reconnect when the server goes away, so I/O resumes after a restart; I/O waits up to --dead-timeout (default 2m) for it, then fails with EIO")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("want DEVICE (or any) and URI")
	}
	u, err := nbd.ParseURI(pos[1])
	if err != nil {
		return usageError{err.Error()}
	}
	cc, err := u.ClientConfig()
	if err != nil {
		return err
	}
	f.Device, f.Client, f.Backend = pos[0], *cc, u.String()
	needsProcess := u.TLS || f.Interface == kernel.InterfaceIoctl
	if !needsProcess && f.Interface == kernel.InterfaceAuto {
		if nl, err := kernel.OpenNetlink(); err != nil {
			needsProcess = true // the ioctl fallback holds the device
		} else {
			nl.Close()
		}
	}
	return attach(ctx, stdout, stderr, f, hold.Request{Dial: u.DialConn, NeedsProcess: needsProcess, Source: u.String()})
}

func runAttach(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("attach", attachUsage, stderr)
	var f attachFlags
	fs.StringVar(&f.Device, "device", "any", "`DEVICE` to use: /dev/nbdN or any (also -c and --connect, as qemu-nbd spells it)")
	fs.StringVar(&f.Device, "c", "any", internalFlag+"qemu-nbd's spelling of --device")
	fs.StringVar(&f.Device, "connect", "any", internalFlag+"qemu-nbd's spelling of --device")
	f.register(fs)
	fs.BoolVar(&f.ReadOnly, "r", false, internalFlag+"qemu-nbd's spelling of --read-only")
	snapshot := fs.Bool("snapshot", false, "keep writes in memory and never modify the image (also -s)")
	fs.BoolVar(snapshot, "s", false, internalFlag+"qemu-nbd's spelling of --snapshot")
	forceShare := fs.Bool("force-share", false, "with --read-only or --snapshot: open the image without QEMU's locks, so that it can be read while another process writes it (as qemu-img -U)")
	format := fs.String("format", "auto", "image `FORMAT`: raw, qcow2, or auto (qcow2 by its header; also -f)")
	fs.StringVar(format, "f", "auto", internalFlag+"qemu-nbd's spelling of --format")
	offset := fs.String("offset", "0", "serve the image from byte `N` on: a partition of a disk image (also -o)")
	fs.StringVar(offset, "o", "0", internalFlag+"qemu-nbd's spelling of --offset")
	size := fs.String("size", "0", "serve `N` bytes from --offset (default: to the end)")
	fs.Bool("fork", false, "accepted for qemu-nbd's sake: attach always returns once the device is ready, holding it in the background where it must")
	disconnect := fs.String("disconnect", "", "detach `DEVICE` instead, as qemu-nbd -d does: the same as nbdlab detach DEVICE (also -d)")
	fs.StringVar(disconnect, "d", "", internalFlag+"qemu-nbd's spelling of --disconnect")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if *disconnect != "" {
		if len(pos) != 0 {
			return usagef("-d DEVICE detaches: it takes no IMAGE")
		}
		return runDisconnect(ctx, []string{*disconnect}, stdout, stderr)
	}
	switch {
	case len(pos) == 2 && f.Device == "any":
		// nbd-client's order, and qemu-nbd's without -c: DEVICE IMAGE.
		if _, ok := kernel.ParseDevice(pos[0]); !ok && pos[0] != "any" {
			return usagef("%q is not a device: give IMAGE alone, or DEVICE IMAGE (DEVICE /dev/nbdN or any)", pos[0])
		}
		f.Device, pos = pos[0], pos[1:]
	case len(pos) != 1:
		return usagef("want one IMAGE (or DEVICE IMAGE)")
	}
	image, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	spec := nbd.ExportSpec{Name: filepath.Base(image), Path: image, ReadOnly: f.ReadOnly, COW: *snapshot, ForceShare: *forceShare}
	if *forceShare && !f.ReadOnly && !*snapshot {
		return usagef("--force-share is for readers, who accept that the image changes under them: add --read-only or --snapshot; a writer always takes QEMU's locks")
	}
	if spec.Offset, err = nbd.ParseSize(*offset); err != nil {
		return usagef("--offset: %v", err)
	}
	if spec.Length, err = nbd.ParseSize(*size); err != nil {
		return usagef("--size: %v", err)
	}
	if spec.Kind, err = nbd.KindOf(image, *format); errors.Is(err, nbd.ErrFormat) {
		return usageError{err.Error()}
	} else if err != nil {
		return err
	}
	// Open it here first, so that a bad image, offset or size is told
	// before the kernel is asked for anything.
	_, closer, err := spec.Open()
	if err != nil {
		return err
	}
	closer.Close()
	f.Backend = image
	open := func() (kernel.Dialer, error) {
		e, _, err := spec.Open()
		if err != nil {
			return nil, err
		}
		srv := &nbd.Server{Exports: []*nbd.Export{e}, Logger: slog.New(slog.NewTextHandler(stderr, nil))}
		return kernel.ServeDialer(srv), nil
	}
	return attach(ctx, stdout, stderr, f, hold.Request{Open: open, Source: image})
}

func runDisconnect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(commandName(ctx, "detach"), "DEVICE|PARTITION", stderr)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want one DEVICE")
	}
	n, ok := kernel.ParseDeviceOrPartition(pos[0])
	if !ok {
		return usagef("device %q: want /dev/nbdN, or a partition of it such as /dev/nbdNp1", pos[0])
	}
	return hold.Detach(ctx, n)
}

func runList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("list", "[--json] [DEVICE...]", stderr)
	asJSON := fs.Bool("json", false, "print the devices as a JSON array")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	want := map[int]bool{}
	for _, a := range pos {
		n, ok := kernel.ParseDeviceOrPartition(a)
		if !ok {
			return usagef("device %q: want /dev/nbdN", a)
		}
		want[n] = true
	}
	devs, err := kernel.Devices()
	if err != nil {
		return err
	}
	if len(devs) == 0 {
		if err := kernel.Present(); err != nil {
			return err
		}
		return errors.New("no /dev/nbd* devices: reload the module with some (modprobe -r nbd; modprobe nbd nbds_max=16)")
	}
	var rows []listedDevice
	found := map[int]bool{}
	for _, d := range devs {
		if len(want) > 0 && !want[d.Index] {
			continue
		}
		found[d.Index] = true
		rows = append(rows, listed(d))
	}
	for n := range want {
		if !found[n] {
			return fmt.Errorf("/dev/nbd%d does not exist", n)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTATE\tSIZE\tCONNECTIONS\tPID\tBACKEND")
	for _, r := range rows {
		conns, pid, backend := "-", "-", r.Backend
		if r.Connections > 0 {
			conns = fmt.Sprintf("%d (%s)", r.Connections, r.Interface)
		}
		if r.PID > 0 {
			pid = fmt.Sprint(r.PID)
		}
		if backend == "" {
			backend = "-"
		}
		state := r.State
		if r.Persist {
			state += ",persist"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", r.Device, state, r.Size, conns, pid, backend)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		switch {
		case r.Dead != "" && r.Persist:
			fmt.Fprintf(stdout, "%s is dead: %s; its I/O waits for the reconnection up to its dead-connection timeout\n", r.Device, r.Dead)
		case r.Dead != "":
			fmt.Fprintf(stdout, "%s is dead: %s; its I/O fails or waits until it is detached (nbdlab detach %s)\n", r.Device, r.Dead, r.Device)
		}
	}
	return nil
}

// listedDevice is a row of nbdlab list.
type listedDevice struct {
	Device      string `json:"device"`
	State       string `json:"state"` // connected or disconnected
	Size        int64  `json:"size"`
	Connections int    `json:"connections,omitempty"`
	Interface   string `json:"interface,omitempty"`
	// PID is the process that holds the device (nbdlab's background
	// holder, or the one in NBD_DO_IT), the one detach waits for and
	// names; 0 when the kernel holds the sockets alone (netlink).
	PID     int    `json:"pid,omitempty"`
	Persist bool   `json:"persist,omitempty"`
	Backend string `json:"backend,omitempty"`
	Log     string `json:"log,omitempty"` // the holder's log
	// Dead says why a device the kernel still calls connected has no
	// server: its holder is gone, or its TCP connection is.
	Dead string `json:"dead,omitempty"`
}

func listed(d kernel.Device) listedDevice {
	r := listedDevice{Device: d.Path, State: "disconnected", Size: d.Size, Backend: d.Backend}
	if d.Connected {
		r.State = "connected"
	}
	st, known := hold.Load(d.Index)
	if known {
		r.Connections, r.Interface, r.PID, r.Persist, r.Log = st.Connections, string(st.Interface), st.PID, st.Persist, st.Log
		if r.Backend == "" {
			r.Backend = st.Source
		}
	}
	if why := hold.Dead(d, st, known); why != "" {
		r.State, r.Dead = "dead", why
	}
	return r
}
