"""An append-only file written with direct I/O, for the capture store's feature segments.

The tap writes every feature batch it sees, hundreds of MiB/s at full speed. Written the usual
way, each new byte goes through a new page of the page cache; on a VM whose host takes free pages
back (free page reporting), every such page faults on first touch, which measured 3.3 ms of CPU per
MiB here against 0.04 ms/MiB for the same writes with ``O_DIRECT`` (and it slowed the victims on
the other core too, ``benchmarks/results/tap_overhead*.md``). So :class:`SegmentFile` copies
records into one staging buffer it keeps for its life and writes whole blocks from it with
``O_DIRECT``: the same memory every time, nothing left in the page cache.

Direct I/O needs block-aligned offsets and lengths. A flush writes the staged bytes rounded up to a
block (the padding is zeros) and keeps the unfinished last block staged, so the next flush writes
it again with more records in it; :meth:`close` truncates the padding away. A crash leaves at
most one block of zeros after the last record, which nothing in the index points at. Readers use
ordinary buffered reads: Linux drops cached pages of a range written with direct I/O, so they see
what was written.

Where the filesystem refuses ``O_DIRECT`` (tmpfs, some network filesystems) the file is written
the ordinary way (``direct`` is then False).
"""

from __future__ import annotations

import errno
import mmap
import os

BLOCK = 4096  # the alignment O_DIRECT needs on every common Linux filesystem (>= logical block size)
STAGE_BYTES = 8 << 20


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


class SegmentFile:
    """Append records to ``path`` (created, or appended to if it exists); ``direct=False`` writes
    through the page cache. ``stage`` lends a staging buffer (an ``mmap`` of whole blocks) to use
    instead of mapping a new one: the capture store passes the same one from segment to segment, so
    no fresh memory is touched however many segments are written. After :meth:`close`, ``stage`` is
    the buffer to lend the next segment (it may have grown)."""

    def __init__(self, path: str | os.PathLike, stage_bytes: int = STAGE_BYTES, direct: bool = True,
                 stage: mmap.mmap | None = None):
        self.path = os.fspath(path)
        self.direct = direct and hasattr(os, "O_DIRECT")
        flags = os.O_WRONLY | os.O_CREAT
        try:
            self._fd = os.open(self.path, flags | (os.O_DIRECT if self.direct else 0), 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self.direct:
                raise
            self.direct = False
            self._fd = os.open(self.path, flags, 0o644)
        size = os.fstat(self._fd).st_size
        # Staged bytes start at self._start (block-aligned); an existing file's last partial block is
        # read back into the stage so that appending rewrites it whole.
        self._start = size // BLOCK * BLOCK
        self.stage = stage if stage is not None else mmap.mmap(-1, max(_round_up(stage_bytes), BLOCK))
        self._fill = 0
        if size > self._start:
            with open(self.path, "rb") as fh:
                fh.seek(self._start)
                tail = fh.read(size - self._start)
            self.stage[:len(tail)] = tail
            self._fill = len(tail)

    def tell(self) -> int:
        """The file's logical size: where the next record starts."""
        return self._start + self._fill

    def append(self, parts) -> tuple[int, int]:
        """Stage one record made of ``parts`` (bytes-like); returns its (offset, size) in the file.
        It is on disk after the next :meth:`flush`."""
        offset = self.tell()
        size = 0
        for part in parts:
            view = memoryview(part).cast("B")
            n = len(view)
            if self._fill + n > len(self.stage):
                self._write_full_blocks()
                if self._fill + n > len(self.stage):
                    self._grow(self._fill + n)
            self.stage[self._fill:self._fill + n] = view
            self._fill += n
            size += n
        return offset, size

    def flush(self) -> None:
        """Write everything staged. The unfinished last block stays staged (and is written again)."""
        if not self._fill:
            return
        end = _round_up(self._fill) if self.direct else self._fill
        self.stage[self._fill:end] = bytes(end - self._fill)
        self._pwrite(end)
        self._keep_from(self._whole())

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
            os.ftruncate(self._fd, self.tell())
        finally:
            os.close(self._fd)
            self._fd = -1

    # --- internals -----------------------------------------------------------------------------
    def _pwrite(self, end: int) -> None:
        view = memoryview(self.stage)
        done = 0
        try:
            while done < end:
                try:
                    done += os.pwrite(self._fd, view[done:end], self._start + done)
                except OSError as exc:
                    if exc.errno != errno.EINVAL or not self.direct:
                        raise
                    self._reopen_buffered()  # opened with O_DIRECT, but writes are refused
        finally:
            view.release()

    def _reopen_buffered(self) -> None:
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY)
        self.direct = False

    def _whole(self) -> int:
        """How many staged bytes a write can leave behind for good: whole blocks (direct I/O), or all."""
        return self._fill // BLOCK * BLOCK if self.direct else self._fill

    def _write_full_blocks(self) -> None:
        whole = self._whole()
        if whole:
            self._pwrite(whole)
            self._keep_from(whole)

    def _keep_from(self, written: int) -> None:
        """Forget the first ``written`` staged bytes (now on disk); move what follows to the front."""
        rest = self._fill - written
        if rest:
            self.stage.move(0, written, rest)
        self._start += written
        self._fill = rest

    def _grow(self, need: int) -> None:
        bigger = mmap.mmap(-1, _round_up(max(need, 2 * len(self.stage))))
        bigger[:self._fill] = self.stage[:self._fill]
        self.stage.close()
        self.stage = bigger
