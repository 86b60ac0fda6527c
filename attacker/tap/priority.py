"""Run the tap's recording at idle CPU priority, so that it never takes a core from the victims.

When the tap shares cores with the edge and the cloud (one machine, a small VM), every millisecond
it spends decoding and writing is a millisecond they lose. Linux's ``SCHED_IDLE`` policy runs a
thread only on a core nothing else wants: a woken edge or cloud thread preempts it at once. What the
recorder has not read yet waits meanwhile in a kernel buffer (the sniffer's packet socket, or the
socket from the relay to its recorder process) and is decoded as soon as a core is free. The price:
if the machine stays busy longer than that buffer lasts, connections are lost (and counted), where
at normal priority the victims would have been slowed instead.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("attacker.tap")

PRIORITIES = ("normal", "idle")  # the tap's --priority


def run_at_idle_priority(whole_process: bool = False) -> bool:
    """Put the calling thread (or every thread of this process) under ``SCHED_IDLE``; threads it
    starts later inherit it. Returns False, with a warning, where that is not possible."""
    if not hasattr(os, "SCHED_IDLE"):
        log.warning("idle priority needs Linux's SCHED_IDLE; recording at normal priority")
        return False
    tids = [0]
    if whole_process and os.path.isdir("/proc/self/task"):
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
        except OSError as exc:  # a sandbox that forbids it
            log.warning("cannot set idle priority (%s); recording at normal priority", exc)
            return False
    return True


def is_idle_priority(tid: int = 0) -> bool:
    """Whether thread ``tid`` (0: the calling thread) runs under ``SCHED_IDLE``."""
    return hasattr(os, "SCHED_IDLE") and os.sched_getscheduler(tid) == os.SCHED_IDLE
