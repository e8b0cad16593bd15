package kernelsuite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// durableAcrossRestart is the durability checker: it writes 48 blocks of
// 64 KiB through dev, each write durable when it returns (an O_DSYNC
// write, or a write and a flush), restarts the server after a third of
// them, and then wants every block back. A server that acknowledges a
// FLUSH or a FUA write before the data is stable loses blocks here. how
// names the kind of write in the error.
func durableAcrossRestart(ctx context.Context, dev interface {
	io.ReaderAt
	io.WriterAt
}, how string, restart func() error) error {
	const blocks, size = 48, 64 << 10
	written := make(chan int, blocks)
	werr := make(chan error, 1)
	go func() {
		for i := 0; i < blocks; i++ {
			if _, err := dev.WriteAt(aligned(size, byte(i+1)), int64(i)*size); err != nil {
				werr <- fmt.Errorf("write %d: %w", i, err)
				return
			}
			written <- i
			time.Sleep(50 * time.Millisecond)
		}
		werr <- nil
	}()
	for i := 0; i < blocks/3; i++ {
		select {
		case <-written:
		case err := <-werr:
			return fmt.Errorf("writes before the restart: %w", err)
		case <-ctx.Done():
			return errors.New("writes before the restart never finished: a hang")
		}
	}
	if err := restart(); err != nil {
		return fmt.Errorf("restart the server: %w", err)
	}
	select {
	case err := <-werr:
		if err != nil {
			return fmt.Errorf("writes across the restart: %w", err)
		}
	case <-ctx.Done():
		return errors.New("writes across the restart never finished: a hang")
	}
	var lost []int
	rerr := make(chan error, 1)
	go func() {
		for i := 0; i < blocks; i++ {
			got := aligned(size, 0)
			if _, err := dev.ReadAt(got, int64(i)*size); err != nil {
				rerr <- fmt.Errorf("read block %d after the restart: %w", i, err)
				return
			}
			if !bytes.Equal(got, aligned(size, byte(i+1))) {
				lost = append(lost, i)
			}
		}
		rerr <- nil
	}()
	select {
	case err := <-rerr:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		return errors.New("reads after the restart never finished: a hang")
	}
	if len(lost) > 0 {
		return fmt.Errorf("%d of %d blocks acknowledged as durable (%s) are not there after the restart: blocks %v", len(lost), blocks, how, lost)
	}
	return nil
}
