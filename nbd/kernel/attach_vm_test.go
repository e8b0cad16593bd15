//go:build linux && vm

package kernel_test

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
	"github.com/nbdlab/nbdlab/vm"
	"github.com/nbdlab/nbdlab/vm/vmtest"
)

// prelude is sourced by every guest script: it loads nbd and defines
// serve, which starts nbdlab serve on 127.0.0.1:10809 and waits for it.
const prelude = `set -eu
N=$NBDLAB
modprobe nbd nbds_max=16 max_part=8
serve() {
  log=$1; shift
  $N serve --listen 127.0.0.1:10809 "$@" >"$log" 2>&1 &
  echo $! > /tmp/serve.pid
  for i in $(seq 200); do grep -q 'msg=listening' "$log" 2>/dev/null && return 0; sleep 0.05; done
  cat "$log"; return 1
}
# waitpart PART [DISK] waits up to 20 s for a partition's device node. With
# DISK it also asks the kernel to reread DISK's partition table each second:
# for qemu-nbd, which leaves the scan to the next open of the device (udev's
# job, and there is no udev in the guest). nbdlab's attach scans itself.
waitpart() {
  for i in $(seq 400); do
    test -b $1 && return 0
    if [ $# -gt 1 ] && [ $((i % 20)) = 0 ]; then blockdev --rereadpt $2 2>/dev/null || true; fi
    sleep 0.05
  done
  echo "$1 did not appear"; return 1
}
rw_check() {
  dd if=/tmp/data of=$1 bs=1M oflag=direct status=none
  dd if=$1 of=/tmp/back bs=1M count=8 iflag=direct status=none
  cmp /tmp/data /tmp/back
}
head -c 8388608 /dev/urandom > /tmp/data
`

var scenarios = []struct {
	name        string
	allKernels  bool
	tls         bool // $CERTS holds TLS credentials (nbdtest.NewTLS)
	script      string
	wantMarkers []string
}{
	{
		name: "connect from another network namespace",
		script: `ip netns add lab
ip netns exec lab ip link set lo up
ip netns exec lab $N serve --listen 127.0.0.1:10809 d=mem:64M >/tmp/s.log 2>&1 &
for i in $(seq 200); do grep -q 'msg=listening' /tmp/s.log && break; sleep 0.05; done
dev=$(ip netns exec lab $N connect any nbd://127.0.0.1/d --connections 2)
rw_check $dev
ip netns exec lab $N disconnect $dev
echo OK netns`,
		wantMarkers: []string{"OK netns"},
	},
	{
		name: "TLS relayed for the kernel",
		tls:  true,
		script: `$N serve --listen 127.0.0.1:10809 --tls-cert $CERTS/server-cert.pem --tls-key $CERTS/server-key.pem \
  --tls-ca $CERTS/ca-cert.pem s=mem:64M >/tmp/s.log 2>&1 &
for i in $(seq 200); do grep -q 'msg=listening' /tmp/s.log && break; sleep 0.05; done
if $N connect any nbd://localhost/s 2>/tmp/err; then echo "plain connect to a TLS-only server succeeded"; exit 1; fi
grep -q TLS /tmp/err
dev=$($N connect any "nbds://localhost/s?tls-certificates=$CERTS")
rw_check $dev
grep -q "tls=true" /tmp/s.log
$N disconnect $dev
echo OK tls`,
		wantMarkers: []string{"OK tls"},
	},
	{
		name:       "netlink connect any, 1 and 4 connections, list, disconnect",
		allKernels: true,
		script: `serve /tmp/s.log d=mem:64M
for c in 1 4; do
  dev=$($N connect any nbd://127.0.0.1/d --connections $c)
  $N list | grep -E "^$dev +connected .* $c \(netlink\)"
  rw_check $dev
  $N disconnect $dev
  $N list | grep -E "^$dev +disconnected"
  echo "OK connections=$c"
done
dev=$($N connect /dev/nbd5 nbd://127.0.0.1/d)
test "$dev" = /dev/nbd5 && rw_check /dev/nbd5 && $N disconnect /dev/nbd5 && echo OK explicit-device
if $N disconnect /dev/nbd5 2>/tmp/err; then exit 1; fi
grep 'not connected' /tmp/err && echo OK disconnect-twice`,
		wantMarkers: []string{"OK connections=1", "OK connections=4", "OK explicit-device", "OK disconnect-twice"},
	},
	{
		name:       "ioctl interface",
		allKernels: true,
		script: `serve /tmp/s.log d=mem:64M
dev=$($N connect /dev/nbd2 nbd://127.0.0.1/d --interface ioctl --connections 2)
test "$dev" = /dev/nbd2
$N list | grep -E "^/dev/nbd2 +connected .* 2 \(ioctl\)"
pid=$(sed -n 's/.*"PID": \([0-9]*\).*/\1/p' /run/nbdlab/nbd2.json)
rw_check /dev/nbd2
$N disconnect /dev/nbd2
sleep 0.5
if kill -0 $pid 2>/dev/null; then echo "ioctl holder $pid still alive"; exit 1; fi
$N list | grep -E "^/dev/nbd2 +disconnected"
echo OK ioctl`,
		wantMarkers: []string{"OK ioctl"},
	},
	{
		name: "read-only, from the client and from the server",
		script: `serve /tmp/s.log d=mem:64M ro=mem:64M,ro
for spec in "nbd://127.0.0.1/d --read-only" "nbd://127.0.0.1/ro"; do
  dev=$($N connect any $spec)
  before=$(dd if=$dev bs=4k count=1 iflag=direct status=none | sha256sum)
  if dd if=/dev/urandom of=$dev bs=4k count=1 oflag=direct status=none 2>/tmp/err; then echo "write succeeded"; exit 1; fi
  cat /tmp/err
  grep -q "Operation not permitted" /tmp/err
  after=$(dd if=$dev bs=4k count=1 iflag=direct status=none | sha256sum)
  test "$before" = "$after"
  $N disconnect $dev
  echo "OK read-only $spec"
done`,
		wantMarkers: []string{"OK read-only nbd://127.0.0.1/d --read-only", "OK read-only nbd://127.0.0.1/ro"},
	},
	{
		// --persist alone: it implies a dead-connection timeout, without
		// which the kernel failed every request the moment the server died.
		name: "persist: server killed and restarted during dd",
		script: `truncate -s 256M /tmp/p.img
head -c 67108864 /dev/urandom > /tmp/big
serve /tmp/s1.log p=file:/tmp/p.img
dev=$($N connect any nbd://127.0.0.1/p --persist)
(dd if=/tmp/big of=$dev bs=64k oflag=direct conv=fsync status=none; echo "dd exit $?" > /tmp/dd.status) &
ddpid=$!
sleep 1
test ! -e /tmp/dd.status || { echo "dd finished before the kill; nothing tested"; exit 1; }
kill -9 $(cat /tmp/serve.pid)
echo "server killed"
sleep 2
serve /tmp/s2.log p=file:/tmp/p.img
wait $ddpid || true
cat /tmp/dd.status
grep -q "dd exit 0" /tmp/dd.status
grep -q "client connected" /tmp/s2.log
dd if=$dev of=/tmp/back bs=1M count=64 iflag=direct status=none
cmp /tmp/big /tmp/back
cmp -n 67108864 /tmp/big /tmp/p.img
$N disconnect $dev
echo OK persist`,
		wantMarkers: []string{"server killed", "dd exit 0", "OK persist"},
	},
	{
		name: "no persist: I/O fails with EIO after the dead-connection timeout",
		script: `serve /tmp/s.log d=mem:64M
dev=$($N connect any nbd://127.0.0.1/d --dead-timeout 5s --timeout 10s)
kill -9 $(cat /tmp/serve.pid)
start=$(date +%s)
if dd if=/tmp/data of=$dev bs=1M count=4 oflag=direct status=none 2>/tmp/err; then echo "dd succeeded without a server"; exit 1; fi
end=$(date +%s)
cat /tmp/err
grep -q "Input/output error" /tmp/err
echo "OK eio after $((end-start))s"
$N disconnect $dev || true`,
		wantMarkers: []string{"OK eio after"},
	},
	{
		// The README's way: the guest's own nbdlab, its init, run again
		// by /proc/1/exe; attach and serve --fork run themselves once more.
		name: "nbdlab as the guest has it, /proc/1/exe",
		script: `truncate -s 64M /tmp/self.img
dev=$(/proc/1/exe attach /tmp/self.img)
dd if=/tmp/data of=$dev bs=1M oflag=direct status=none
/proc/1/exe detach $dev && echo OK self attach
/proc/1/exe serve --fork --listen 127.0.0.1:10811 d=mem:1M && echo OK self fork`,
		wantMarkers: []string{"OK self attach", "OK self fork"},
	},
	{
		name: "list tells a device whose server or holder is gone",
		script: `serve /tmp/s.log d=mem:64M
dev=$($N connect any nbd://127.0.0.1/d)
$N list | grep -E "^$dev +connected "
kill -9 $(cat /tmp/serve.pid)
sleep 1
$N list > /tmp/l; cat /tmp/l
grep -qE "^$dev +dead " /tmp/l && grep -q "$dev is dead: no connection to 127.0.0.1:10809 is open" /tmp/l && echo OK dead server
$N disconnect $dev
truncate -s 64M /tmp/x.img
dev=$($N attach /tmp/x.img)
pid=$($N list --json $dev | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
kill -9 $pid
sleep 1
$N list > /tmp/l; cat /tmp/l
grep -qE "^$dev +dead " /tmp/l && grep -q "its holder, pid $pid, is gone" /tmp/l && echo OK dead holder
$N detach $dev || true`,
		wantMarkers: []string{"OK dead server", "OK dead holder"},
	},
	{
		name: "detach refuses a device md holds at once, naming it",
		script: `truncate -s 64M /tmp/r1.img /tmp/r2.img
d1=$($N attach /tmp/r1.img)
d2=$($N attach /tmp/r2.img)
mdadm --create /dev/md/lab --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean --homehost=any $d1 $d2
md=$(basename $(readlink -f /dev/md/lab))
start=$(date +%s)
if $N detach $d1 2>/tmp/err; then echo "detach of an md member succeeded"; exit 1; fi
end=$(date +%s)
cat /tmp/err
grep -q "$md holds $d1" /tmp/err && grep -q "mdadm /dev/$md --fail $d1 --remove $d1" /tmp/err && [ $((end-start)) -lt 5 ] && echo OK md named at once
mdadm --stop /dev/md/lab
$N detach $d1 && $N detach $d2 && echo OK detached after stop`,
		wantMarkers: []string{"OK md named at once", "OK detached after stop"},
	},
	{
		name: "attach refuses an image another device writes",
		script: `qemu-img create -q -f qcow2 /tmp/l.qcow2 64M
dev=$($N attach /tmp/l.qcow2)
if $N attach /tmp/l.qcow2 2>/tmp/err; then echo "a second writer attached"; exit 1; fi
cat /tmp/err
grep -q "/tmp/l.qcow2 is in use" /tmp/err && echo OK second attach refused
if qemu-nbd -c /dev/nbd9 /tmp/l.qcow2 2>/tmp/err; then echo "qemu-nbd attached it too"; exit 1; fi
grep -q '"write" lock' /tmp/err && echo OK qemu-nbd refused
$N detach $dev`,
		wantMarkers: []string{"OK second attach refused", "OK qemu-nbd refused"},
	},
	{
		name: "attach an image with a partition table, list, detach",
		script: `truncate -s 64M /tmp/a.img
printf 'label: dos\n,16M,L\n,,L\n' | sfdisk -q /tmp/a.img
dev=$($N attach /tmp/a.img)
waitpart ${dev}p2
test -b ${dev}p1 && test -b ${dev}p2 && echo "OK partitions ${dev}p1 ${dev}p2"
$N list | grep -E "^$dev +connected .*/tmp/a.img"
pid=$($N list $dev | awk 'NR==2 {print $(NF-1)}')
$N list --json $dev > /tmp/l.json; cat /tmp/l.json; test "$(grep -c device /tmp/l.json)" = 1
grep -q "\"pid\": $pid," /tmp/l.json && grep -q '"log": "/run/nbdlab/' /tmp/l.json && kill -0 $pid && echo OK one pid
mkfs.ext4 -q ${dev}p2 && mount ${dev}p2 /mnt && echo hello > /mnt/f && umount /mnt
$N detach $dev
$N list | grep -E "^$dev +disconnected"
dev=$($N attach --read-only /tmp/a.img)
waitpart ${dev}p2
mount -o ro ${dev}p2 /mnt && grep -q hello /mnt/f && umount /mnt && echo OK reattached
$N detach $dev
echo OK attach`,
		wantMarkers: []string{"OK one pid", "OK partitions", "OK reattached", "OK attach"},
	},
	{
		name: "attach a qcow2 image, partition, mount, detach by the partition's name",
		script: `qemu-img create -q -f qcow2 /tmp/c.qcow2 64M
dev=$($N attach /tmp/c.qcow2)
printf 'label: dos\n,16M,L\n,,L\n' | sfdisk -q $dev
waitpart ${dev}p2
fdisk -l $dev | grep -q "^${dev}p2 " && echo "OK fdisk lists ${dev}p1 ${dev}p2"
mkfs.ext4 -q ${dev}p1 && mount ${dev}p1 /mnt && cp /tmp/data /mnt/f && umount /mnt
$N detach ${dev}p1
qemu-img check /tmp/c.qcow2 && echo OK check after detach
dev=$($N attach /tmp/c.qcow2)
waitpart ${dev}p1
mount ${dev}p1 /mnt && cmp /tmp/data /mnt/f && umount /mnt && echo OK reattached
$N detach ${dev}p1
qemu-img check /tmp/c.qcow2 && echo OK qcow2`,
		wantMarkers: []string{"OK fdisk lists", "OK check after detach", "OK reattached", "OK qcow2"},
	},
	{
		name: "detach refuses a mounted partition at once; qemu-nbd -c in the guest",
		script: `truncate -s 64M /tmp/m.img
dev=$($N attach /tmp/m.img)
printf 'label: dos\n,,L\n' | sfdisk -q $dev
waitpart ${dev}p1
mkfs.ext4 -q ${dev}p1 && mount ${dev}p1 /mnt
start=$(date +%s)
if $N detach ${dev}p1 2>/tmp/err; then echo "detach of a mounted partition succeeded"; exit 1; fi
end=$(date +%s)
cat /tmp/err
grep -q "${dev}p1 on /mnt: unmount it first" /tmp/err && [ $((end-start)) -lt 5 ] && echo OK refused at once
umount /mnt
$N detach ${dev}p1 && echo OK detached after umount
qemu-nbd -c /dev/nbd5 -f raw /tmp/m.img
waitpart /dev/nbd5p1 /dev/nbd5
mount /dev/nbd5p1 /mnt && umount /mnt && echo OK qemu-nbd -c
qemu-nbd -d /dev/nbd5`,
		wantMarkers: []string{"OK refused at once", "OK detached after umount", "OK qemu-nbd -c"},
	},
}

// TestIntegrationKernelAttach runs each scenario in a lab VM, with the
// nbd.ko that "go run mage.go buildNbd" installs (or the distribution's).
func TestIntegrationKernelAttach(t *testing.T) {
	ks := vmtest.Kernels(t)
	testenv.Need(t, "sfdisk", "fdisk", "mkfs.ext4", "qemu-img", "qemu-nbd", "mdadm")
	bin := testenv.Nbdlab(t)
	for _, sc := range scenarios {
		kernels := ks[:1]
		if sc.allKernels {
			kernels = ks
		}
		for _, k := range kernels {
			t.Run(sc.name+"/"+k.Release, func(t *testing.T) {
				cfg := vm.Config{Kernel: k.Release, Timeout: 5 * time.Minute, Env: append(os.Environ(), "NBDLAB="+bin)}
				if sc.tls {
					creds := nbdtest.NewTLS(t)
					cfg.Env = append(cfg.Env, "CERTS="+creds.Dir)
					cfg.Shares = []vm.Share{{Host: creds.Dir}}
				}
				res, out, err := vmtest.Run(t, cfg, "sh", "-c", prelude+sc.script)
				if err != nil {
					t.Fatal(err)
				}
				if res.ExitCode != 0 {
					t.Fatalf("guest script exited %d", res.ExitCode)
				}
				for _, m := range sc.wantMarkers {
					if !strings.Contains(out.Stdout.String(), m) {
						t.Errorf("guest output lacks %q", m)
					}
				}
				if m := regexp.MustCompile(`OK eio after (\d+)s`).FindStringSubmatch(out.Stdout.String()); m != nil {
					if secs, _ := strconv.Atoi(m[1]); secs > 60 {
						t.Errorf("I/O took %ds to fail; want about the 5s dead-connection timeout, not a hang", secs)
					}
				}
			})
		}
	}
}
