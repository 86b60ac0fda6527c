"""The capture store's direct-I/O segment file: records land intact at the offsets it returns,
readable while it is being written, whatever their sizes and alignment."""

import os

import numpy as np
import pytest

from attacker.captures.segment_file import BLOCK, SegmentFile


def _records(rng, sizes):
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


def _read(path, offset, size):
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


@pytest.mark.parametrize("direct", [True, False])
def test_records_read_back_at_their_offsets_during_and_after_writing(tmp_path, direct):
    rng = np.random.default_rng(0)
    path = tmp_path / "seg.npys"
    # sizes that straddle blocks, fill the stage exactly, and outgrow it
    records = _records(rng, [1, 4095, 4096, 5000, 3 * BLOCK + 17, 20000, 70000, 0, 123])
    seg = SegmentFile(path, stage_bytes=16 * 1024, direct=direct)
    where = []
    for i, rec in enumerate(records):
        where.append(seg.append([rec[:len(rec) // 2], memoryview(rec)[len(rec) // 2:]]))
        if i % 3 == 2:
            seg.flush()
            for (off, size), earlier in zip(where, records):  # a reader sees every flushed record whole
                assert _read(path, off, size) == earlier
    assert [w[1] for w in where] == [len(r) for r in records]
    assert where[0][0] == 0 and all(a[0] + a[1] == b[0] for a, b in zip(where, where[1:]))
    seg.close()
    assert os.path.getsize(path) == sum(map(len, records))  # the padding of the last block is gone
    assert path.read_bytes() == b"".join(records)


@pytest.mark.parametrize("direct", [True, False])
def test_reopening_appends_after_an_unaligned_end(tmp_path, direct):
    path = tmp_path / "seg.npys"
    path.write_bytes(b"a" * 5000)
    seg = SegmentFile(path, direct=direct)
    assert seg.tell() == 5000
    assert seg.append([b"b" * 10]) == (5000, 10)
    seg.flush()
    assert _read(path, 0, 5010) == b"a" * 5000 + b"b" * 10
    seg.close()
    assert path.read_bytes() == b"a" * 5000 + b"b" * 10


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_a_filesystem_refusing_direct_io_is_written_the_ordinary_way(tmp_path, monkeypatch, refused_at):
    """Some filesystems refuse O_DIRECT when the file is opened (EINVAL), others only on the first
    write: either way the records are written, through the page cache."""
    import errno

    from attacker.captures import segment_file

    real_open, real_pwrite = os.open, os.pwrite
    direct_fds = set()

    def fake_open(path, flags, *args):
        if flags & os.O_DIRECT and refused_at == "open":
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags, *args)
        (direct_fds.add if flags & os.O_DIRECT else direct_fds.discard)(fd)
        return fd

    def fake_pwrite(fd, data, offset):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(segment_file.os, "open", fake_open)
    monkeypatch.setattr(segment_file.os, "pwrite", fake_pwrite)
    path = tmp_path / "seg.npys"
    seg = SegmentFile(path)
    assert seg.append([b"xyz"]) == (0, 3)
    seg.flush()
    assert seg.direct is False
    assert seg.append([b"0123456789"]) == (3, 10)
    seg.close()
    assert path.read_bytes() == b"xyz0123456789"


def test_direct_io_is_used_where_the_filesystem_allows_it(tmp_path):
    seg = SegmentFile(tmp_path / "seg.npys")
    try:
        fs = os.statvfs(tmp_path)
        assert fs.f_bsize <= BLOCK or not seg.direct
        if seg.direct:  # the flag is on the open file, not just asked for
            import fcntl
            assert fcntl.fcntl(seg._fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        seg.close()
