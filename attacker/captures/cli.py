"""``attacker captures``: the capture store as a table (or JSON lines), with heads and deployments."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone

from models.errors import SplitlabError

from .store import CaptureStore

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str | None, flag: str) -> float | None:
    """Unix seconds, an ISO 8601 time (UTC unless it says otherwise) or an age (``10m`` = 10 minutes ago)."""
    if value is None:
        return None
    match = _AGE.match(value.strip())
    if match:
        return time.time() - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise SplitlabError(f"{flag} must be unix seconds, an ISO time or an age like 10m/2h/1d, got {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def show_captures(args) -> int:
    store = CaptureStore(args.store, create=False)
    if args.last is not None and args.last < 1:
        raise SplitlabError(f"--last must be at least 1, got {args.last}")
    known = store.deployment_ids()
    if args.deployment is not None and args.deployment not in known:
        raise SplitlabError(f"no deployment {args.deployment!r} in the capture store {args.store}; "
                            f"seen: {', '.join(known) or 'none (is the tap running and the edge pointed at it?)'}")
    caps = store.captures(deployment=args.deployment, since=parse_time(args.since, "--since"),
                          until=parse_time(args.until, "--until"), request_id=args.request_id,
                          last=None if args.all else args.last)
    total = store.count(args.deployment)
    if args.json:
        for c in caps:
            print(json.dumps({"id": c.id, "request_id": c.request_id, "deployment_id": c.deployment_id,
                              "method": c.method, "peer": c.peer, "time": c.time, "latency": c.latency,
                              "status": c.status, "error": c.error, "wire_dtype": c.wire_dtype, "shape": c.shape,
                              "top1": c.top1, "features_file": c.features_file,
                              "ground_truth": store.ground_truth(c.request_id) is not None}))
        return 0
    print(f"capture store {store.root}: {total} capture(s)"
          + (f" of {args.deployment}" if args.deployment else "")
          + f", {store.total_bytes() / 2**20:.1f} MiB of features")
    if not caps:
        print("  (no captures match)")
    else:
        header = f"{'id':>6}  {'time (UTC)':<23}  {'deployment':<28} {'request id':<26} {'method':<11} " \
                 f"{'shape':<16} {'wire':<8} {'ms':>7}  {'status':<10} top1"
        print(header)
        for c in caps:
            status = "OK" if c.status == 0 else f"{c.status}"
            if c.error:
                status += f" ({c.error[:40]})"
            top1 = ",".join(map(str, c.top1[:6])) + ("..." if len(c.top1) > 6 else "")
            ms = f"{c.latency * 1e3:.1f}" if c.latency is not None else "-"
            truth = " +truth" if store.ground_truth(c.request_id) is not None else ""
            print(f"{c.id:>6}  {_when(c.time):<23}  {c.deployment_id[:28]:<28} {c.request_id[:26]:<26} "
                  f"{c.method:<11} {'x'.join(map(str, c.shape)):<16} {c.wire_dtype:<8} {ms:>7}  {status:<10} "
                  f"{top1}{truth}")
    heads = store.heads(args.deployment)
    if heads:
        print("heads seen (GetHead payloads, stored once per digest):")
        for h in heads:
            print(f"  {h.deployment_id:<28} {h.arch}/{h.split:<10} sha256 {h.sha256[:16]}  {h.size / 1024:.1f} KiB  "
                  f"seen {h.times_seen}x, last {_when(h.last_seen)}")
    return 0
