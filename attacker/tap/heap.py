"""Keep the memory a recording process frees, instead of handing it back to the kernel each time.

A tap decodes and writes messages of up to tens of MiB, many times a second. glibc's malloc serves
such blocks with ``mmap`` and returns them with ``munmap`` (or trims the heap's top), so every
message costs fresh pages: page faults and zeroing in this process, and on a virtual machine with
free page reporting (virtio-balloon) the host takes the returned pages away and whoever allocates
next, the victims included, faults them back in. Measured (``benchmarks/results/
tap_overhead-separate.md``, sniff tap on its own core, lenet5 conv1 b64, 1.1 MiB calls, two runs
each): glibc's defaults cost the victims 22-28% of throughput, these thresholds 7-14%, and
unmapping every block over 128 KiB 35-38%. The cost is that the process holds on to what it freed,
bounded by the recorder's queue (``--queue-mb``) plus the largest messages in flight.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("attacker.tap")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap and are reused
TRIM_THRESHOLD = 1 << 30  # give the heap's free top back only past 1 GiB


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed blocks rather than return them; False where that is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the thresholds; freed memory goes back to the kernel as usual")
    return ok
