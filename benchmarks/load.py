"""Load: K concurrent edge clients, each on its own connection, straight to the cloud and through each tap.

    python -m benchmarks.load [--clients 1,2,4,8,16,32,64] [--mode unary,stream]
                              [--path direct,passive,proxy,sniff] [--seconds 3] [--quick] [--out FILE]

Starts a real ``cloud_server`` and the taps as processes (the pieces of ``benchmarks.tap_overhead``:
random-weight lenet5 deployed at relu2, batch-1 head features, the sniffer watching a second
loopback address of the same cloud). For every path, mode and K it runs K client threads in this
process, each with its own ``CloudClient`` and its own TCP connection (gRPC Python shares one
connection among channels to the same address unless told otherwise: ``own_connection=True`` sets
``grpc.use_local_subchannel_pool``), for ``--seconds``. ``unary``: each client makes one call at a
time; ``stream``: each client keeps ``--window`` requests in flight on one ``InferStream``.

Every request carries an id of its own; per cell the report counts requests sent, replies, errors
(by status), **mismatched** replies (a reply whose id is not the request's) and **lost** requests
(neither answered nor failed once the cell is over: each request has a deadline, so anything
still open by then is lost), throughput, p50/p99/p99.9 latency per request, the RSS of the cloud
and of the tap (with its recorder process) before and after the cell, and for recording taps the
captures the store holds per request sent once the recorder has caught up. Clients are threads
(one process, one GIL): at large K this process is itself a bottleneck on a small machine, which
shows as throughput flattening, not as losses. Each open stream holds one of the cloud's
``--workers`` handler threads (16 by default): streaming clients beyond that wait for one, which
shows as a p99 near the cell's length (K = 32 and 64 on 2 cores: 1.9-2.3 s with 16 workers,
0.16-0.22 s with ``--cloud-workers 80``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from benchmarks.harness.report import notes_beside
from benchmarks.tap_overhead import (ROOT, SNIFF_HOST, TAPS, check_alive, features_for, free_port,
                                     make_deployments, settled_counts, start, wait_port, wait_ready)

PATHS = {"direct": None, "passive": TAPS["tap"], "proxy": TAPS["proxy mode"], "sniff": TAPS["sniff"]}
MODES = ["unary", "stream"]
DEP = "lenet5-bench--relu2"
CLIENTS = [1, 2, 4, 8, 16, 32, 64]
QUICK = {"clients": [1, 4], "paths": ["direct", "passive"], "seconds": 1.0}


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its live children, MiB (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except (OSError, StopIteration):
        return 0.0
    return rss + sum(rss_mb(int(c)) for c in children)


class _Tally:
    """What K clients saw in one cell; threads add to it under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = self.answered = self.mismatched = 0
        self.errors: Counter = Counter()
        self.latencies: list[float] = []
        self.first_error = ""

    def reply(self, rid: str, result, latency: float) -> None:
        with self.lock:
            if result.request_id != rid:
                self.mismatched += 1
            else:
                self.answered += 1
                self.latencies.append(latency)

    def error(self, exc: BaseException) -> None:
        code = getattr(getattr(exc, "code", None), "name", type(exc).__name__)
        with self.lock:
            self.errors[code] += 1
            self.first_error = self.first_error or str(exc)


def _client(address: str, mode: str, feats: np.ndarray, name: str, start: threading.Barrier, end: list[float],
            tally: _Tally, window: int, timeout: float) -> None:
    from edge_client.client import CloudClient

    with CloudClient(address, timeout=timeout, own_connection=True) as client:
        client.infer(DEP, feats)  # connect and warm up before the clock starts
        start.wait()
        i = 0
        if mode == "unary":
            while time.perf_counter() < end[0]:
                rid = f"{name}-{i}"
                i += 1
                t0 = time.perf_counter()
                with tally.lock:
                    tally.sent += 1
                try:
                    result = client.infer(DEP, feats, request_id=rid)
                except Exception as exc:  # noqa: BLE001 - counted
                    tally.error(exc)
                    continue
                tally.reply(rid, result, time.perf_counter() - t0)
            return
        slots = threading.Semaphore(window)
        with client.stream() as stream:
            while time.perf_counter() < end[0]:
                slots.acquire()
                rid = f"{name}-{i}"
                i += 1
                t0 = time.perf_counter()
                with tally.lock:
                    tally.sent += 1
                fut = stream.submit(DEP, feats, request_id=rid)

                def done(f, rid=rid, t0=t0):
                    t1 = time.perf_counter()
                    exc = f.exception()
                    if exc is None:
                        tally.reply(rid, f.result(), t1 - t0)
                    else:
                        tally.error(exc)
                    slots.release()

                fut.add_done_callback(done)
            # close() waits for every outstanding request: each is answered or fails by its deadline


def run_cell(address: str, mode: str, clients: int, feats: np.ndarray, seconds: float, window: int = 4,
             timeout: float = 30.0) -> dict:
    """K clients against ``address`` for ``seconds``; the counts and latencies of the cell."""
    tally = _Tally()
    barrier = threading.Barrier(clients + 1)
    end = [float("inf")]
    threads = [threading.Thread(target=_client, args=(address, mode, feats, f"c{k}", barrier, end, tally, window,
                                                      timeout), name=f"load-client-{k}", daemon=True)
               for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait(timeout=120)
    t0 = time.perf_counter()
    end[0] = t0 + seconds
    for t in threads:
        t.join(seconds + timeout + 10)
    elapsed = time.perf_counter() - t0
    hung = sum(t.is_alive() for t in threads)
    lat = np.asarray(tally.latencies) * 1e3
    with tally.lock:
        lost = tally.sent - tally.answered - tally.mismatched - sum(tally.errors.values())
        return {"mode": mode, "clients": clients, "sent": tally.sent, "answered": tally.answered,
                "errors": dict(tally.errors), "mismatched": tally.mismatched, "lost": lost, "hung_clients": hung,
                "seconds": elapsed, "per_s": tally.answered / elapsed,
                "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
                "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
                "p999": float(np.percentile(lat, 99.9)) if len(lat) else float("nan"),
                "first_error": tally.first_error}


def run_load(paths: list[str], modes: list[str], clients: list[int], seconds: float, threads: int = 1,
             window: int = 4, progress: bool = True, cloud_workers: int | None = None) -> list[dict]:
    """Start the cloud and the taps, run every (path, mode, K) cell, stop them; one dict per cell."""
    from attacker.tap.sniffer import can_sniff

    if "sniff" in paths and not can_sniff():
        print("sniff left out: it needs CAP_NET_RAW (run as root)", flush=True)
        paths = [p for p in paths if p != "sniff"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
               SPLITLAB_THREADS=str(threads))
    rows: list[dict] = []
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        tmp = Path(tmp)
        deps = make_deployments(tmp / "artifacts", {"lenet5"})
        feats = features_for(deps[DEP], tmp / "artifacts" / "deployments" / DEP, 1)
        try:
            cloud_port = free_port()
            procs.append(start([sys.executable, "-m", "cloud_server", "--host", f"127.0.0.1,{SNIFF_HOST}",
                                "--port", str(cloud_port), "--artifacts", str(tmp / "artifacts"),
                                "--threads", str(threads), "--log-level", "warning",
                                *(["--workers", str(cloud_workers)] if cloud_workers else [])], tmp / "cloud.log", env))
            cloud = procs[0]
            targets: dict[str, tuple[str, subprocess.Popen | None, Path | None]] = {}
            for path in paths:
                if PATHS[path] is None:
                    targets[path] = (f"127.0.0.1:{cloud_port}", None, None)
                    continue
                port, admin, store = free_port(), f"127.0.0.1:{free_port()}", tmp / f"captures-{path}"
                upstream = f"{SNIFF_HOST}:{cloud_port}" if path == "sniff" else f"127.0.0.1:{cloud_port}"
                procs.append(start([sys.executable, "-m", "attacker", "tap", "--listen", f"127.0.0.1:{port}",
                                    "--admin", admin, "--upstream", upstream, "--store", str(store),
                                    "--threads", str(threads), "--log-level", "warning", *PATHS[path]],
                                   tmp / f"tap-{path}.log", env))
                if path == "sniff":  # it must see the clients' connections open
                    wait_port(admin, procs[-1])
                targets[path] = (upstream if path == "sniff" else f"127.0.0.1:{port}", procs[-1], store)
            for address, _, _ in targets.values():
                try:
                    wait_ready(address)
                except Exception:
                    check_alive(procs)  # a process that died says why
                    raise
            cells = [(p, m, k) for p in targets for m in modes for k in clients]
            recorded_before: dict[str, int] = {}
            for path, mode, k in tqdm(cells, desc="load cells", unit="cell", disable=not progress):
                address, tap, store = targets[path]
                before = (rss_mb(cloud.pid), rss_mb(tap.pid) if tap else float("nan"))
                row = run_cell(address, mode, k, feats, seconds, window)
                row.update(path=path, cloud_mb=(before[0], rss_mb(cloud.pid)),
                           tap_mb=(before[1], rss_mb(tap.pid) if tap else float("nan")))
                if store is not None:
                    total = settled_counts({path: store}, quiet=1.0, timeout=60)[path][0]
                    row["recorded"] = (total - recorded_before.get(path, 0)) / max(1, row["sent"] + k)  # + warm-ups
                    recorded_before[path] = total
                check_alive(procs)
                rows.append(row)
                if progress:
                    tqdm.write(_line(row))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return rows


def _line(row: dict) -> str:
    errors = ", ".join(f"{c} {n}" for c, n in sorted(row["errors"].items())) or "0"
    return (f"{row['path']:<8} {row['mode']:<6} K={row['clients']:<3} {row['per_s']:9.1f} req/s  p50 {row['p50']:7.2f} "
            f"p99 {row['p99']:7.2f} p99.9 {row['p999']:7.2f} ms  sent {row['sent']} lost {row['lost']} "
            f"mismatched {row['mismatched']} errors {errors}")


def write_report(path: Path, rows: list[dict], argv: list[str], seconds: float, window: int,
                 cloud_workers: int | None = None) -> None:
    import platform

    lines = [
        "# Load: concurrent edge clients, direct and through the taps", "",
        "Command: `python -m benchmarks.load" + "".join(" " + a for a in argv) + "`", "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.python_implementation()} {platform.python_version()}; "
        f"the cloud, the taps and this process (K client threads, each with its own TCP connection) share "
        f"the cores (SPLITLAB_THREADS=1). lenet5 relu2, batch 1 (4 KiB of features per request), "
        f"{seconds:g} s per cell; stream: {window} requests in flight per client. Latency is per request "
        f"(ms); the cloud ran {cloud_workers or 16} handler threads (`--workers`; each open stream holds "
        f"one). `lost`: requests neither answered nor failed by the end of the cell; `mismatched`: replies "
        f"whose request id is not the request's. RSS in MiB before -> after the cell (the tap with its "
        f"recorder process). `recorded`: captures in the tap's store per request sent (warm-ups included).",
        "",
        "| path | mode | K | requests | req/s | p50 ms | p99 ms | p99.9 ms | errors | lost | mismatched "
        "| cloud RSS MiB | tap RSS MiB | recorded |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        errors = ", ".join(f"{c} {n}" for c, n in sorted(r["errors"].items())) or "0"
        tap = "-" if r["tap_mb"][0] != r["tap_mb"][0] else f"{r['tap_mb'][0]:.0f} -> {r['tap_mb'][1]:.0f}"
        rec = f"{r['recorded']:.1%}" if "recorded" in r else "-"
        lines.append(f"| {r['path']} | {r['mode']} | {r['clients']} | {r['sent']} | {r['per_s']:.1f} | {r['p50']:.2f} "
                     f"| {r['p99']:.2f} | {r['p999']:.2f} | {errors} | {r['lost']} | {r['mismatched']} "
                     f"| {r['cloud_mb'][0]:.0f} -> {r['cloud_mb'][1]:.0f} | {tap} | {rec} |")
    firsts = [f"- {r['path']} {r['mode']} K={r['clients']}: {r['first_error']}" for r in rows if r["first_error"]]
    if firsts:
        lines += ["", "First error of each cell that had one:", "", *firsts]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines + notes_beside(path)) + "\n")


def _list(kind, choices=None):
    def parse(text: str):
        items = [kind(x) for x in text.split(",") if x.strip()]
        bad = [x for x in items if (choices and x not in choices) or (kind is int and x < 1)]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of "
                                             + (", ".join(choices) if choices else "positive integers"))
        return items
    return parse


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=_list(int), default=CLIENTS,
                   help="numbers of concurrent clients, comma-separated (default 1,2,4,8,16,32,64)")
    p.add_argument("--mode", type=_list(str, MODES), default=MODES, help="unary, stream or both (default both)")
    p.add_argument("--path", type=_list(str, list(PATHS)), default=list(PATHS),
                   help="direct, passive, proxy, sniff (comma-separated; default all; sniff needs root)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per cell (default 3)")
    p.add_argument("--window", type=int, default=4, help="stream mode: requests in flight per client (default 4)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("SPLITLAB_THREADS", "1")),
                   help="threads of the cloud and the taps [SPLITLAB_THREADS, default 1]")
    p.add_argument("--cloud-workers", type=int, default=None,
                   help="the cloud's --workers (gRPC handler threads; each open stream holds one; default the "
                        "cloud's, 16)")
    p.add_argument("--quick", action="store_true", help="K = 1,4, direct and passive, 1 s per cell")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load.md"),
                   help="report (default benchmarks/results/load.md)")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.path, args.seconds = QUICK["clients"], QUICK["paths"], QUICK["seconds"]
    if args.seconds <= 0 or args.window < 1 or args.threads < 1:
        p.error("--seconds must be positive, --window and --threads at least 1")
    os.environ.setdefault("SPLITLAB_THREADS", str(args.threads))
    rows = run_load(args.path, args.mode, args.clients, args.seconds, args.threads, args.window,
                    progress=not args.no_progress, cloud_workers=args.cloud_workers)
    write_report(Path(args.out), rows, argv, args.seconds, args.window, args.cloud_workers)
    print(f"wrote {args.out}")
    bad = [r for r in rows if r["lost"] or r["mismatched"] or r["hung_clients"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
