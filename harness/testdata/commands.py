# Run as: nbdsh -n -c "exec(open('commands.py').read())"
# Exercises every NBD command and every error rule of nbdlab serve through
# libnbd. Run by nbdsh with NBDLAB_RW and NBDLAB_RO set to export URIs.
import errno
import os

import nbd

rw = nbd.NBD()
rw.set_strict_mode(0)  # let libnbd send what a careless client would
rw.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
rw.connect_uri(os.environ["NBDLAB_RW"])
size = rw.get_size()
assert size == 64 << 20, size

def expect(code, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        got = e.errno if isinstance(e.errno, int) else getattr(errno, str(e.errno), e.errno)
        assert got == code, "%s%r: errno %s, want %s (%s)" % (fn.__name__, args, e.errno, code, e)
        return
    raise AssertionError("%s%r succeeded; want errno %d" % (fn.__name__, args, code))

# Every advertised capability.
for can in ("flush", "fua", "trim", "zero", "fast_zero", "cache", "df", "multi_conn"):
    assert getattr(rw, "can_" + can)(), can
assert not rw.is_read_only()
assert rw.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)

# READ, WRITE (plain and FUA), FLUSH.
pattern = bytes(range(256)) * 16
rw.pwrite(pattern, 0)
rw.pwrite(pattern, 1 << 20, nbd.CMD_FLAG_FUA)
assert rw.pread(4096, 0) == pattern
assert rw.pread(4096, 1 << 20, nbd.CMD_FLAG_DF) == pattern
assert rw.pread(100, 50) == pattern[50:150]
rw.flush()

# BLOCK_STATUS, with and without REQ_ONE.
def extents(off, length, flags=0):
    got = []
    def cb(metacontext, offset, entries, err):
        assert metacontext == nbd.CONTEXT_BASE_ALLOCATION
        got.extend(zip(entries[0::2], entries[1::2]))
    rw.block_status(length, off, cb, flags)
    return got
ext = extents(0, 2 << 20)
assert ext[0][1] == 0 and 4096 <= ext[0][0] < 1 << 20, ext
assert ext[1][1] == nbd.STATE_HOLE | nbd.STATE_ZERO, ext
assert len(extents(0, 2 << 20, nbd.CMD_FLAG_REQ_ONE)) == 1

# TRIM leaves zeroes and a hole.
rw.trim(4096, 0)
assert rw.pread(4096, 0) == bytes(4096)
rw.pwrite(pattern * 16, 2 << 20)
assert extents(2 << 20, 1 << 20)[0][1] == 0
rw.trim(1 << 20, 2 << 20)
assert extents(2 << 20, 1 << 20) == [(1 << 20, nbd.STATE_HOLE | nbd.STATE_ZERO)]

# WRITE_ZEROES: plain, NO_HOLE, FAST_ZERO, FUA.
for flags in (0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FAST_ZERO, nbd.CMD_FLAG_FUA):
    rw.pwrite(pattern, 1 << 20)
    rw.zero(1024, (1 << 20) + 1024, flags)
    got = rw.pread(4096, 1 << 20)
    assert got == pattern[:1024] + bytes(1024) + pattern[2048:], flags

# CACHE.
rw.cache(1 << 20, 0)

# FUA is taken on every command, and means nothing where nothing is written.
assert rw.pread(1, 0, nbd.CMD_FLAG_FUA) == b"\0"
rw.flush(nbd.CMD_FLAG_FUA)
rw.cache(4096, 0, nbd.CMD_FLAG_FUA)
assert len(extents(0, 4096, nbd.CMD_FLAG_FUA)) >= 1

# A read of nothing (a structured reply with no data chunk).
assert rw.pread(0, 4096) == b""

# Error rules.
expect(errno.EINVAL, rw.pread, 4096, size - 1)
expect(errno.EINVAL, rw.trim, 2, size - 1)
expect(errno.EINVAL, rw.cache, 2, size - 1)
expect(errno.EINVAL, rw.block_status, 2, size - 1, lambda *a: 0)
expect(errno.ENOSPC, rw.pwrite, b"xx", size - 1)
expect(errno.ENOSPC, rw.zero, 2, size - 1)
expect(errno.EINVAL, rw.pread, 1, 0, 1 << 9)          # unknown flag
expect(errno.EINVAL, rw.pread, 1, 0, nbd.CMD_FLAG_REQ_ONE)  # flag not for READ
expect(errno.ERANGE, rw.pread, (64 << 20) + 1, 0)       # above the maximum: libnbd refuses it
assert len(rw.pread(48 << 20, 0)) == 48 << 20           # above 32 MiB, within it
# The session survives its errors.
assert rw.pread(4096, 1 << 20)[:1024] == pattern[:1024]

ro = nbd.NBD()
ro.set_strict_mode(0)
ro.connect_uri(os.environ["NBDLAB_RO"])
assert ro.is_read_only()
assert not ro.can_trim() and not ro.can_zero()
before = ro.pread(4096, 0)
expect(errno.EPERM, ro.pwrite, b"x" * 4096, 0)
expect(errno.EPERM, ro.trim, 4096, 0)
expect(errno.EPERM, ro.zero, 4096, 0)
assert ro.pread(4096, 0) == before

# A write above the maximum is refused with EINVAL, its payload dropped,
# and the session goes on.
big = nbd.NBD()
big.set_strict_mode(0)
big.connect_uri(os.environ["NBDLAB_RW"])
expect(errno.ERANGE, big.pwrite, bytes((64 << 20) + 1), 0)  # libnbd refuses what the server advertises it would
assert big.pread(4096, 1 << 20)[:1024] == pattern[:1024]
big.shutdown()
assert rw.pread(4096, 1 << 20)[:1024] == pattern[:1024]

rw.shutdown()
ro.shutdown()
print("commands.py: all checks passed")
