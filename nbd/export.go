package nbd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/nbdlab/nbdlab/imagelock"
	"github.com/nbdlab/nbdlab/qcow2"
)

// Export is one named export of a Server.
type Export struct {
	Name        string
	Description string
	Backend     Backend
	ReadOnly    bool

	// released is set, under the Server's exportsMu, once SetExports took
	// the export out and its last connection let go of it: no connection
	// may take it up again.
	released bool
}

// flags returns the transmission flags advertised for the export.
func (e *Export) flags(structured bool) TransmissionFlags {
	f := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagCanMultiConn | FlagSendCache
	if e.ReadOnly {
		f |= FlagReadOnly
	} else {
		f |= FlagSendWriteZeroes | FlagSendFastZero
		if _, ok := e.Backend.(Trimmer); ok {
			f |= FlagSendTrim
		}
	}
	if structured {
		f |= FlagSendDF
	}
	return f
}

// ExportSpec is a parsed NAME=SPEC export argument.
type ExportSpec struct {
	Name     string
	Kind     string // "file", "qcow2" or "mem"
	Path     string // for file and qcow2
	Size     int64  // for mem
	ReadOnly bool
	COW      bool
	// ForceShare opens a read-only or copy-on-write image without
	// QEMU's locks (force-share), so that it can be read while another
	// process writes it; without it, an image another process writes is
	// refused (package imagelock).
	ForceShare bool
	// EIO is a range that fails with EIO (eio=OFF+LEN), for tests.
	EIOOff, EIOLen int64
	// Offset and Length serve only part of the image (offset=N,
	// length=N): a partition of a disk image. Length 0 is to the end.
	Offset, Length int64
}

// ParseExportSpec parses NAME=file:PATH[,ro][,cow][,force-share][,offset=N][,length=N][,eio=OFF+LEN],
// NAME=qcow2:PATH with the same options, or
// NAME=mem:SIZE with the same options.
func ParseExportSpec(s string) (ExportSpec, error) {
	var spec ExportSpec
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return spec, fmt.Errorf("export %q: want NAME=file:PATH, NAME=qcow2:PATH or NAME=mem:SIZE, with ,ro or ,cow after it", s)
	}
	if len(name) > maxString {
		return spec, fmt.Errorf("export %q: name is longer than %d bytes", s, maxString)
	}
	if strings.ContainsRune(name, 0) {
		return spec, fmt.Errorf("export %q: name contains a NUL byte", s)
	}
	spec.Name = name
	kind, arg, ok := strings.Cut(rest, ":")
	if !ok {
		return spec, fmt.Errorf("export %q: %q has no type: write file:PATH, qcow2:PATH or mem:SIZE", s, rest)
	}
	spec.Kind = kind
	// Options come last. A file path may itself contain commas, so for
	// file: only known options are taken off its end.
	for {
		i := strings.LastIndexByte(arg, ',')
		if i < 0 {
			break
		}
		switch opt := arg[i+1:]; {
		case opt == "ro" || opt == "readonly" || opt == "read-only":
			spec.ReadOnly = true
		case opt == "cow" || opt == "snapshot":
			spec.COW = true
		case opt == "force-share" || opt == "share":
			spec.ForceShare = true
		case strings.HasPrefix(opt, "offset=") || strings.HasPrefix(opt, "length="):
			key, val, _ := strings.Cut(opt, "=")
			n, err := ParseSize(val)
			if err != nil {
				return spec, fmt.Errorf("export %q: %s: %w", s, key, err)
			}
			if key == "offset" {
				spec.Offset = n
			} else {
				spec.Length = n
			}
		case strings.HasPrefix(opt, "eio="):
			off, n, err := parseRange(strings.TrimPrefix(opt, "eio="))
			if err != nil {
				return spec, fmt.Errorf("export %q: %w", s, err)
			}
			spec.EIOOff, spec.EIOLen = off, n
		case kind == "file" || kind == "qcow2":
			// Part of the path, unless the path without it is what
			// exists: then it was meant as an option.
			if _, err := os.Stat(arg); err != nil {
				if _, err := os.Stat(arg[:i]); err == nil {
					return spec, fmt.Errorf("export %q: unknown option %q (known: ro, cow, force-share, offset=N, length=N, eio=OFF+LEN)", s, opt)
				}
			}
			i = len(arg)
		default:
			return spec, fmt.Errorf("export %q: unknown option %q (known: ro, cow, force-share, offset=N, length=N, eio=OFF+LEN)", s, opt)
		}
		if i == len(arg) {
			break
		}
		arg = arg[:i]
	}
	if spec.ForceShare && !spec.ReadOnly && !spec.COW {
		return spec, fmt.Errorf("export %q: force-share is for readers, who accept that the image changes under them: add ,ro or ,cow", s)
	}
	switch kind {
	case "file", "qcow2":
		if arg == "" {
			return spec, fmt.Errorf("export %q: %s: needs a path", s, kind)
		}
		spec.Path = arg
	case "mem":
		size, err := ParseSize(arg)
		if err != nil {
			return spec, fmt.Errorf("export %q: %w", s, err)
		}
		if size == 0 {
			return spec, fmt.Errorf("export %q: mem: size must be more than 0", s)
		}
		spec.Size = size
	default:
		return spec, fmt.Errorf("export %q: unknown type %q (known: file, qcow2, mem)", s, kind)
	}
	return spec, nil
}

// Access is how the spec opens its image, and so which of QEMU's locks
// it takes: a writer, or a reader (read-only or copy-on-write), or no
// lock at all with ForceShare.
func (spec ExportSpec) Access() imagelock.Mode {
	switch {
	case spec.ForceShare && (spec.ReadOnly || spec.COW):
		return imagelock.ForceShare
	case spec.ReadOnly || spec.COW:
		return imagelock.Reader
	}
	return imagelock.Writer
}

// Open opens the spec's backend. The returned closer releases it.
func (spec ExportSpec) Open() (*Export, io.Closer, error) {
	var b Backend
	var closer io.Closer = io.NopCloser(nil)
	switch spec.Kind {
	case "mem":
		b = NewMem(spec.Size)
	case "qcow2":
		q, err := OpenQcow2(spec.Path, spec.Access())
		if err != nil {
			return nil, nil, fmt.Errorf("export %s: %w", spec.Name, err)
		}
		b, closer = q, q
	case "file":
		if ok, _ := qcow2.IsImage(spec.Path); ok { // an error: OpenFile reports it
			return nil, nil, fmt.Errorf("export %s: %s is a qcow2 image, which file: would serve as its raw bytes: serve it as %s=qcow2:%s", spec.Name, spec.Path, spec.Name, spec.Path)
		}
		f, err := OpenFile(spec.Path, spec.Access())
		if errors.Is(err, os.ErrPermission) && !spec.ReadOnly && !spec.COW {
			return nil, nil, fmt.Errorf("export %s: %w: serve it read-only (%s=file:%s,ro) or with writes kept in memory (,cow)", spec.Name, err, spec.Name, spec.Path)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("export %s: %w", spec.Name, err)
		}
		b, closer = f, f
	default:
		return nil, nil, fmt.Errorf("export %s: unknown type %q", spec.Name, spec.Kind)
	}
	if spec.Offset != 0 || spec.Length != 0 {
		w, err := NewWindow(b, spec.Offset, spec.Length)
		if err != nil {
			closer.Close()
			return nil, nil, fmt.Errorf("export %s: %w", spec.Name, err)
		}
		b = w
	}
	if spec.COW {
		b = NewCOW(b)
	}
	if spec.EIOLen > 0 {
		b = &Faulty{Backend: b, Off: spec.EIOOff, Len: spec.EIOLen}
	}
	return &Export{Name: spec.Name, Backend: b, ReadOnly: spec.ReadOnly}, closer, nil
}

// ErrFormat is wrapped by KindOf's error for a format it does not know.
var ErrFormat = errors.New("want raw, qcow2 or auto")

// KindOf is the export kind ("file" or "qcow2") of the image at path for
// a format as qemu-nbd's -f takes it: raw, qcow2, or auto (qcow2 by its
// header, else raw). raw is refused for a qcow2 image rather than export
// its raw bytes.
func KindOf(path, format string) (string, error) {
	qcow, err := qcow2.IsImage(path)
	if err != nil {
		return "", fmt.Errorf("open image: %w", err)
	}
	switch format {
	case "auto", "":
		if qcow {
			return "qcow2", nil
		}
		return "file", nil
	case "raw":
		if qcow {
			return "", fmt.Errorf("%s is a qcow2 image: --format raw would export its raw bytes; drop --format, or say --format qcow2", path)
		}
		return "file", nil
	case "qcow2":
		return "qcow2", nil
	}
	return "", fmt.Errorf("--format %q: %w", format, ErrFormat)
}

// ParseSize parses a byte count with an optional binary suffix: 4096, 64K,
// 512M, 1G, 2T (also KiB, MiB, GiB, TiB).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "IB"), "B")
	shift := 0
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		case 'P':
			shift = 50
		}
		if shift != 0 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a byte count like 4096, 64K, 512M or 1G", s)
	}
	if n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("size %q: %w", s, errors.New("too large"))
	}
	return n << shift, nil
}
