package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/nbdlab/nbdlab/internal/selfbuild"
	"github.com/nbdlab/nbdlab/vm"
)

// VMOptions configure RunVM.
type VMOptions struct {
	Kernel string    // release; default the newest installed
	Boots  int       // default 5
	Out    io.Writer // default os.Stdout
}

// RunVM boots a lab VM Boots times running "true" and prints each wall
// time from QEMU start to exit, and their median against the 6 s goal.
func RunVM(ctx context.Context, o VMOptions) error {
	if o.Boots == 0 {
		o.Boots = 5
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	bin, err := selfbuild.Nbdlab(ctx)
	if err != nil {
		return err
	}
	var walls []time.Duration
	for i := range o.Boots {
		start := time.Now()
		res, err := vm.Run(ctx, vm.Config{Kernel: o.Kernel, Init: bin, Timeout: 2 * time.Minute}, "true")
		if err != nil {
			return fmt.Errorf("bench: boot %d: %w", i+1, err)
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("bench: boot %d: true exited %d", i+1, res.ExitCode)
		}
		wall := time.Since(start)
		walls = append(walls, wall)
		fmt.Fprintf(o.Out, "boot %d: kernel %s, %s, init after %s, exit after %s (QEMU), %s in all\n", i+1,
			res.Kernel.Release, res.Accel, res.Boot.Round(time.Millisecond), res.Wall.Round(time.Millisecond), wall.Round(time.Millisecond))
	}
	slices.Sort(walls)
	med := walls[len(walls)/2]
	verdict := "meets"
	if med > 6*time.Second {
		verdict = "MISSES"
	}
	fmt.Fprintf(o.Out, "median wall time for 'true': %s (%s the 6s goal)\n", med.Round(time.Millisecond), verdict)
	return nil
}
