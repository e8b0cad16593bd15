// Package cpio reads and writes newc ("070701") cpio archives: the format of
// Linux initramfs images and of RPM payloads. Written archives are
// reproducible: entries sorted, timestamps and owners zero.
package cpio

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
)

// File is one entry of an archive.
type File struct {
	Name string // without a leading slash
	Mode uint32 // type and permission bits, as in stat(2)
	Data []byte // contents of a regular file, or a symlink's target
}

// File type bits of File.Mode.
const (
	ModeDir     = 0o040000
	ModeRegular = 0o100000
	ModeSymlink = 0o120000
)

// Write writes files as a newc ("070701") archive, sorted by name, with
// zero timestamps and owners, so equal inputs give equal bytes.
func Write(w io.Writer, files []File) error {
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	bw := bufio.NewWriter(w)
	var off int64
	put := func(f File, ino int) {
		name := f.Name + "\x00"
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, f.Mode, 0, 0, 1, 0, len(f.Data), 0, 0, 0, 0, len(name), 0)
		n, _ := bw.WriteString(hdr + name)
		off += int64(n)
		off += pad(bw, off)
		n, _ = bw.Write(f.Data)
		off += int64(n)
		off += pad(bw, off)
	}
	for i, f := range sorted {
		if f.Name == "" || f.Name[0] == '/' {
			return fmt.Errorf("cpio: bad entry name %q", f.Name)
		}
		put(f, i+1)
	}
	put(File{Name: "TRAILER!!!"}, 0)
	return bw.Flush()
}

func pad(w io.Writer, off int64) int64 {
	n := (4 - off%4) % 4
	w.Write(make([]byte, n))
	return n
}

// Read reads a newc archive written by Write or by the kernel's
// tools, up to its trailer.
func Read(r io.Reader) ([]File, error) {
	br := bufio.NewReader(r)
	var files []File
	var off int64
	skip := func() error {
		n := (4 - off%4) % 4
		_, err := io.CopyN(io.Discard, br, n)
		off += n
		return err
	}
	for {
		hdr := make([]byte, 110)
		if _, err := io.ReadFull(br, hdr); err != nil {
			return nil, fmt.Errorf("cpio: header at %d: %w", off, err)
		}
		off += 110
		if string(hdr[:6]) != "070701" && string(hdr[:6]) != "070702" {
			return nil, fmt.Errorf("cpio: bad magic %q at %d", hdr[:6], off-110)
		}
		field := func(i int) (uint64, error) {
			return strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
		}
		mode, err1 := field(1)
		size, err2 := field(6)
		nameSize, err3 := field(11)
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("cpio: header at %d: %w", off-110, err)
		}
		if nameSize == 0 || nameSize > 4096 || size > 1<<31 {
			return nil, fmt.Errorf("cpio: header at %d: name size %d, file size %d", off-110, nameSize, size)
		}
		name := make([]byte, nameSize)
		if _, err := io.ReadFull(br, name); err != nil {
			return nil, fmt.Errorf("cpio: name at %d: %w", off, err)
		}
		off += int64(nameSize)
		if err := skip(); err != nil {
			return nil, err
		}
		n := string(name[:nameSize-1])
		if n == "TRAILER!!!" {
			return files, nil
		}
		data := make([]byte, 0, min(size, 1<<20))
		buf := make([]byte, 64<<10)
		for remaining := size; remaining > 0; {
			k, err := io.ReadFull(br, buf[:min(remaining, uint64(len(buf)))])
			data = append(data, buf[:k]...)
			if err != nil {
				return nil, fmt.Errorf("cpio: data of %s: %w", n, err)
			}
			remaining -= uint64(k)
		}
		off += int64(size)
		if err := skip(); err != nil {
			return nil, err
		}
		files = append(files, File{Name: n, Mode: uint32(mode), Data: data})
	}
}
