package bench

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// MakeTree writes to dst a tar of the first n regular files of the source
// tree at src (in lexical order), under "tree/": the small-file workload
// of the NFS comparison, real source code rather than generated noise.
// It returns the bytes of file data it holds.
func MakeTree(dst, src string, n int) (int64, error) {
	f, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	var count int
	var size int64
	errEnough := fmt.Errorf("enough")
	err = filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeType != 0 && !d.IsDir() {
			return nil // links and devices: not in the tree
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(filepath.Join("tree", rel))
		hdr.Uname, hdr.Gname, hdr.Uid, hdr.Gid = "", "", 0, 0
		if d.IsDir() {
			hdr.Name += "/"
			return tw.WriteHeader(hdr)
		}
		if count == n {
			return errEnough
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		if _, err := io.Copy(tw, in); err != nil {
			return err
		}
		count++
		size += info.Size()
		return nil
	})
	if err != nil && err != errEnough {
		return 0, fmt.Errorf("bench: tree from %s: %w", src, err)
	}
	if count < n {
		return 0, fmt.Errorf("bench: %s has only %d files, the tree needs %d", src, count, n)
	}
	if err := tw.Close(); err != nil {
		return 0, err
	}
	return size, f.Close()
}
