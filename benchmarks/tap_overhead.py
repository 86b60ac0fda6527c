"""Tap overhead: throughput and p50 latency through ``attacker tap`` vs straight to the cloud.

    python -m benchmarks.tap_overhead [--seconds 2] [--rounds 3] [--quick] [--placement shared|separate]

Starts a real ``cloud_server`` and four taps as separate processes: the default passive tap
(TCP relay + HTTP/2 decoding) recording into a temporary capture store, the same with
``--no-record`` (relay only: what the extra hop costs), ``--mode proxy`` (the gRPC proxy)
recording too, and ``--mode sniff`` (out of the path: its client connects to the same cloud process
at a second loopback address, 127.0.0.2, the only one the sniffer watches; needs CAP_NET_RAW, left
out without it). It drives them from this process with the edge's gRPC client
(``edge_client.client.CloudClient``) sending head features of real deployments (random weights:
speed does not depend on them) for lenet5 and he-cifar-cnn. Each workload runs ``--rounds`` times,
the targets interleaved in every round (so drift and other load hit all alike); the table gives
the median over rounds. Modes: ``unary`` (one call in flight: p50 is the edge's latency) and
``stream`` (an InferStream with 8 requests in flight: throughput).
Goal: through the recording tap no more than 10% slower than direct.

Placement: ``shared`` (default) lets every process run on every core, so the tap's CPU comes out
of the cloud's and the client's. ``separate`` pins the victims (this client and the cloud) to the
first half of the cores and the taps (relay and recorder) to the other half, as when the attacker
taps the link from its own machine (the compose file's separate ``attacker`` service); then the
figures show what the extra hop and the recording add to the victims' latency and throughput, not
the CPU they would otherwise have had. Both are Linux-only (``sched_setaffinity``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.report import notes_beside

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.10

# (arch, split, batch, mode)
WORKLOADS = [
    ("lenet5", "relu2", 1, "unary"),
    ("lenet5", "conv1", 64, "unary"),
    ("he-cifar-cnn", "conv11", 1, "unary"),
    ("he-cifar-cnn", "relu22", 8, "unary"),
    ("he-cifar-cnn", "relu32", 64, "unary"),
    ("lenet5", "relu2", 1, "stream"),
    ("he-cifar-cnn", "conv11", 1, "stream"),
    ("he-cifar-cnn", "relu32", 64, "stream"),
]
QUICK = [WORKLOADS[0], WORKLOADS[2], WORKLOADS[4], WORKLOADS[6]]
TAPS = {"tap": [], "relay only": ["--no-record"], "proxy mode": ["--mode", "proxy"],
        "sniff": ["--mode", "sniff", "--interface", "lo"]}
# The sniff tap is not in the path: its client connects to the same cloud process at a second
# loopback address (same port), and only that address is sniffed, so the other targets' traffic is
# neither recorded nor filtered and every target is measured against the same server.
SNIFF = "sniff"
SNIFF_HOST = "127.0.0.2"
WARMUP = 3  # calls before each measurement


def calls_sent(measurements: list[tuple[float, float, int]]) -> int:
    """Calls a target got over its rounds: the measured ones and each round's warm-up."""
    return sum(m[2] for m in measurements) + WARMUP * len(measurements)


def settled_counts(stores: dict[str, Path], quiet: float = 3.0,
                   timeout: float = 120.0) -> dict[str, tuple[int, float]]:
    """For each store: its captures once its tap has stopped adding to them (recorders may lag the
    traffic), and the ``time.monotonic()`` at which that count last changed (when it caught up).
    The stores are watched together, so one tap's lag does not show as another's."""
    from attacker.captures.store import CaptureStore

    end = time.monotonic() + timeout
    seen = {name: (-1, time.monotonic()) for name in stores}
    while True:
        for name, store in stores.items():
            try:
                with CaptureStore(store) as cs:
                    n = cs.count()
            except Exception:
                n = 0
            if n != seen[name][0]:
                seen[name] = (n, time.monotonic())
        now = time.monotonic()
        if now > end or all(now - since >= quiet for _, since in seen.values()):
            return seen
        time.sleep(0.2)


def wait_port(address: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``proc`` listens on ``address``; a clear error (with its output) if it exits first."""
    host, _, port = address.rpartition(":")
    end = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), 1).close()
            return
        except OSError:
            check_alive([proc])
            if time.monotonic() > end:
                raise RuntimeError(f"{' '.join(proc.args[1:4])} did not listen on {address} in {timeout:g} s; "
                                   f"its output ends:\n{log_tail(proc)}") from None
            time.sleep(0.1)


def log_tail(proc: subprocess.Popen, lines: int = 15) -> str:
    text = Path(proc.log).read_text(errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])


def check_alive(procs: list[subprocess.Popen]) -> None:
    """Raise, naming the command and showing its output, if one of ``procs`` has exited."""
    for proc in procs:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args[1:4])} exited with status {proc.returncode}; "
                               f"its output ends:\n{log_tail(proc)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_deployments(root: Path, archs: set[str]) -> dict:
    """Random-weight models deployed at every split point the workloads use."""
    import torch

    from models.artifacts import ArtifactStore
    from models.deploy import deploy
    from models.zoo import build_model

    store = ArtifactStore(root)
    shapes = {"lenet5": (1, 28, 28), "he-cifar-cnn": (3, 32, 32)}
    for arch in archs:
        torch.manual_seed(0)
        model = build_model(arch, 10, shapes[arch])
        manifest = {"arch": arch, "dataset": "random", "num_classes": 10, "input_shape": list(shapes[arch]),
                    "options": {"dropout": 0.0}, "preprocessing": "x/255", "model_id": f"{arch}-bench"}
        store.save_model(f"{arch}-bench", model.state_dict(), manifest)
        for split in sorted({w[1] for w in WORKLOADS if w[0] == arch}):
            deploy(store, f"{arch}-bench", split, check_inputs=torch.rand(4, *shapes[arch]))
    return {d: store.deployment(d) for d in store.list_deployments()}


def start(cmd: list[str], log: Path, env: dict, cpus: set[int] | None = None) -> subprocess.Popen:
    """Start ``cmd`` with its output in the file ``log``; with ``cpus``, it and every process it starts
    run only on those cores."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, preexec_fn=pin)
    proc.log = log
    return proc


def placement_cpus(placement: str) -> tuple[set[int] | None, set[int] | None]:
    """(victim cores, tap cores) for ``placement``; (None, None) when everything shares every core."""
    if placement == "shared":
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--placement separate needs at least 2 cores")
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live children, from /proc (Linux)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return 0.0
    return total + sum(proc_cpu(int(c)) for c in children)


def wait_ready(address: str, timeout: float = 60.0) -> None:
    from edge_client.client import CloudClient

    with CloudClient(address, retries=False) as c:
        c.wait_ready(timeout)


def features_for(dep: dict, deployment_dir: Path, batch: int) -> np.ndarray:
    from models.onnx_runtime import head_session

    sess = head_session(str(deployment_dir / "head.onnx"))
    x = np.random.default_rng(0).random((batch, *dep["input_shape"]), dtype=np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def run_unary(client, dep_id: str, feats: np.ndarray, seconds: float) -> tuple[float, float, int]:
    lat = []
    for _ in range(WARMUP):
        client.infer(dep_id, feats)
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        s = time.perf_counter()
        client.infer(dep_id, feats)
        lat.append(time.perf_counter() - s)
    elapsed = time.perf_counter() - t0
    return len(lat) * len(feats) / elapsed, statistics.median(lat) * 1e3, len(lat)


def run_stream(client, dep_id: str, feats: np.ndarray, seconds: float, window: int = 8) -> tuple[float, float, int]:
    lat, pending = [], []
    with client.stream() as s:
        for f in [s.submit(dep_id, feats) for _ in range(WARMUP)]:
            f.result()
        end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        done = 0
        while time.perf_counter() < end or pending:
            while len(pending) < window and time.perf_counter() < end:
                pending.append((time.perf_counter(), s.submit(dep_id, feats)))
            sent, fut = pending.pop(0)
            fut.result()
            lat.append(time.perf_counter() - sent)
            done += 1
        elapsed = time.perf_counter() - t0
    return done * len(feats) / elapsed, statistics.median(lat) * 1e3, done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tap_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per workload (default 3)")
    p.add_argument("--quick", action="store_true", help="four workloads only")
    p.add_argument("--only", type=int, action="append", help="run only workload number N (0-based; repeatable)")
    p.add_argument("--placement", choices=["shared", "separate"], default="shared",
                   help="shared: all processes on all cores; separate: the taps on their own cores (see above)")
    from attacker.tap.priority import PRIORITIES

    p.add_argument("--priority", choices=PRIORITIES, default="normal",
                   help="the recording taps' --priority (idle: they record only on cores the victims leave free)")
    p.add_argument("--out", help="report path (default benchmarks/results/tap_overhead[-separate][-idle].md)")
    args = p.parse_args(argv)
    if args.out is None:
        name = ("tap_overhead" + ("-separate" if args.placement == "separate" else "")
                + ("-idle" if args.priority == "idle" else "") + ".md")
        args.out = str(ROOT / "benchmarks" / "results" / name)
    victim_cpus, tap_cpus = args.cpus = placement_cpus(args.placement)
    if victim_cpus:
        os.sched_setaffinity(0, victim_cpus)  # this process is the edge client
    os.environ.setdefault("SPLITLAB_THREADS", "1")
    from models.onnx_runtime import set_torch_threads

    set_torch_threads(1)
    from edge_client.client import CloudClient

    workloads = QUICK if args.quick else WORKLOADS
    if args.only:
        workloads = [WORKLOADS[i] for i in args.only]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(part for part in (str(ROOT), os.environ.get("PYTHONPATH")) if part),
               SPLITLAB_THREADS="1")
    procs: list[subprocess.Popen] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="tap-bench-") as tmp:
        tmp = Path(tmp)
        print("deploying random-weight models ...", flush=True)
        deps = make_deployments(tmp / "artifacts", {w[0] for w in workloads})
        try:
            cloud_port = free_port()
            procs.append(start([sys.executable, "-m", "cloud_server", "--host", f"127.0.0.1,{SNIFF_HOST}",
                                "--port", str(cloud_port), "--artifacts", str(tmp / "artifacts"),
                                "--log-level", "warning"], tmp / "cloud.log", env, victim_cpus))
            upstream, cloud_pid = f"127.0.0.1:{cloud_port}", procs[-1].pid
            targets = {"direct": upstream}
            pids_by_target = {}
            stores = {}  # target -> its capture store, for the targets that record
            from attacker.tap.sniffer import can_sniff

            taps = {k: v for k, v in TAPS.items() if k != SNIFF or can_sniff()}
            if SNIFF not in taps:
                print("sniff tap left out: it needs CAP_NET_RAW (run as root)", flush=True)
            for name, extra in taps.items():
                port, admin = free_port(), f"127.0.0.1:{free_port()}"
                up = f"{SNIFF_HOST}:{cloud_port}" if name == SNIFF else upstream
                store = tmp / f"captures-{len(procs)}"
                if "--no-record" not in extra:
                    stores[name] = store
                    extra = [*extra, "--priority", args.priority]
                procs.append(start([sys.executable, "-m", "attacker", "tap", "--listen", f"127.0.0.1:{port}",
                                    "--admin", admin, "--upstream", up,
                                    "--store", str(store), "--log-level", "warning", *extra],
                                   tmp / f"proc-{len(procs)}.log", env, tap_cpus))
                targets[name] = up if name == SNIFF else f"127.0.0.1:{port}"
                pids_by_target[name] = procs[-1].pid
                if name == SNIFF:  # it must see the edge's connection open
                    wait_port(admin, procs[-1])
            for address in targets.values():
                try:
                    wait_ready(address)
                except Exception:
                    check_alive(procs)  # a process that died says why
                    raise
            clients = {name: CloudClient(addr, timeout=120) for name, addr in targets.items()}
            recorded_before: dict[str, int] = {}
            for arch, split, batch, mode in workloads:
                dep_id = f"{arch}-bench--{split}"
                feats = features_for(deps[dep_id], tmp / "artifacts" / "deployments" / dep_id, batch)
                results: dict[str, list[tuple[float, float, int]]] = {n: [] for n in targets}
                cpu = {n: 0.0 for n in targets}
                for r in range(args.rounds):
                    k = r % len(targets)
                    order = list(targets)[k:] + list(targets)[:k]
                    for name in order:
                        fn = run_unary if mode == "unary" else run_stream
                        pids = [cloud_pid] + ([pids_by_target[name]] if name in pids_by_target else [])
                        before = time.process_time() + sum(proc_cpu(p) for p in pids)
                        results[name].append(fn(clients[name], dep_id, feats, args.seconds))
                        cpu[name] += time.process_time() + sum(proc_cpu(p) for p in pids) - before
                rounds_end = time.monotonic()
                row = {"workload": f"{arch} {split}", "batch": batch, "mode": mode,
                       "mb": feats.nbytes / 2**20, "recorded": {}, "lag": {},
                       "rounds": {n: [x[0] for x in res] for n, res in results.items()}}  # img/s per round
                settled = settled_counts(stores)
                for name, (total, caught_up) in settled.items():  # what each recording tap kept of this workload
                    row["lag"][name] = max(0.0, caught_up - rounds_end)  # how long recording ran on after
                    row["recorded"][name] = (total - recorded_before.get(name, 0)) / calls_sent(results[name])
                    recorded_before[name] = total
                if SNIFF in clients:  # a fresh connection for the next workload: one lost here stays lost
                    clients[SNIFF].close()
                    clients[SNIFF] = CloudClient(targets[SNIFF], timeout=120)
                for name, res in results.items():
                    calls = calls_sent(res)
                    row[name] = (statistics.median(x[0] for x in res), statistics.median(x[1] for x in res),
                                 sum(x[2] for x in res), cpu[name] / calls * 1e3)
                rows.append(row)
                print(_line(row), flush=True)
            for c in clients.values():
                c.close()
        finally:
            for proc in procs:
                proc.terminate()
            tap_out = []
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    continue
                lines = [ln for ln in log_tail(proc, 50).splitlines() if ln.startswith("tap stopped")]
                if lines and '"recorded":' in lines[-1] and \
                        ('"mode": "passive"' in lines[-1] or '"mode": "sniff"' in lines[-1]):
                    tap_out.append(lines[-1])
    write_report(Path(args.out), rows, args, tap_out)
    print(f"wrote {args.out}")
    return 0


def _slower(row, name) -> tuple[float, float]:
    """(throughput loss, p50 increase) of ``name`` against direct, as fractions."""
    d_tp, d_p50 = row["direct"][:2]
    tp, p50 = row[name][:2]
    return 1 - tp / d_tp, p50 / d_p50 - 1


def _line(row) -> str:
    t_tp, t_lat = _slower(row, "tap")
    sniff = ""
    if SNIFF in row:
        s_tp, s_lat = _slower(row, SNIFF)
        sniff = (f" | sniff {row[SNIFF][0]:8.1f} img/s p50 {row[SNIFF][1]:7.2f} ms ({s_tp:+.1%} thr loss, "
                 f"{s_lat:+.1%} p50) CPU {row[SNIFF][3]:.2f} recorded {row['recorded'].get(SNIFF, 0):.1%}"
                 f" (done {row['lag'].get(SNIFF, 0):.1f} s after the rounds)")
    return (f"{row['workload']:<22} b{row['batch']:<3} {row['mode']:<6} direct {row['direct'][0]:8.1f} img/s "
            f"p50 {row['direct'][1]:7.2f} ms | tap {row['tap'][0]:8.1f} img/s p50 {row['tap'][1]:7.2f} ms "
            f"({t_tp:+.1%} thr loss, {t_lat:+.1%} p50) | relay only {row['relay only'][0]:8.1f} img/s "
            f"p50 {row['relay only'][1]:7.2f} ms | proxy mode {row['proxy mode'][0]:8.1f} img/s "
            f"p50 {row['proxy mode'][1]:7.2f} ms | CPU ms/call direct {row['direct'][3]:.2f} tap {row['tap'][3]:.2f} "
            f"relay {row['relay only'][3]:.2f} proxy {row['proxy mode'][3]:.2f}" + sniff)


def write_report(path: Path, rows: list[dict], args, tap_out: list[str]) -> None:
    import platform

    lines = [
        "# Tap overhead", "",
        "Command: `python -m benchmarks.tap_overhead"
        + (f" --seconds {args.seconds:g}" if args.seconds != 2.0 else "")
        + (f" --rounds {args.rounds}" if args.rounds != 3 else "") + (" --quick" if args.quick else "")
        + (f" --placement {args.placement}" if args.placement != "shared" else "")
        + (f" --priority {args.priority}" if args.priority != "normal" else "") + "`", "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.python_implementation()} {platform.python_version()}, "
        f"everything on the CPU (no GPU used); the cloud server, four taps and the client are six processes "
        + ("sharing these cores" if args.placement == "shared" else
           f"pinned: client and cloud to core(s) {sorted(args.cpus[0])}, "
           f"the taps and their recorders to core(s) {sorted(args.cpus[1])}")
        + f" (SPLITLAB_THREADS=1). Medians over {args.rounds} interleaved rounds of {args.seconds:g} s; "
        "features are real head outputs (random weights). Throughput in images/s; p50 is per call "
        "(unary: one call in flight, the edge's latency; stream: 8 requests in flight on one InferStream). "
        "CPU ms/call: CPU time of the client, the cloud and the tap (with its recorder process) per call, "
        "from /proc: what the tap adds independently of other load on the machine. In brackets after a "
        "tap's losses: the lowest and highest throughput loss of single rounds (direct and that tap "
        "measured back to back), a measure of the noise.",
        "",
        "Goal: through the recording tap at most 10% slower than direct, in throughput and in p50, with "
        "every call recorded (`recorded`: captures in the tap's store / calls sent, this workload). "
        "Two recording taps: the default passive relay (`tap`: the edge connects to it, it relays to the "
        "cloud and decodes a copy) and `--mode sniff` (`sniff`: the edge connects to the cloud itself and "
        "the tap reads copies of the packets on `lo`; its client connects to the same cloud process at a "
        f"second address, {SNIFF_HOST}, the only one the sniffer watches). Also shown: the passive relay without recording "
        "(the cost of the hop alone) and the recording tap in `--mode proxy` (a gRPC proxy re-issuing "
        "each call)."
        + (" The recording taps ran with `--priority idle`: they decode and write only on cores the victims "
           "leave free (Linux SCHED_IDLE); `recorded` is counted after each workload, once they have "
           "caught up, and their CPU ms/call counts only what they used during the measured rounds." if args.priority == "idle" else ""), "",
        "| workload | batch | MiB/call | mode | direct img/s | direct p50 ms "
        "| sniff img/s | sniff p50 ms | sniff thr loss / p50 incr. | sniff recorded | sniff goal met "
        "| tap img/s | tap p50 ms | tap thr loss / p50 incr. | tap recorded | tap goal met "
        "| relay-only img/s | relay-only p50 ms | proxy-mode img/s | proxy-mode p50 ms "
        "| proxy-mode thr loss / p50 incr. | CPU ms/call: direct / sniff / tap / relay only / proxy mode |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(row, name) -> str:
        if name not in row:
            return "n/a | n/a | n/a | n/a | n/a"
        loss, inc = _slower(row, name)
        kept = row["recorded"].get(name, 0.0)
        met = "yes" if loss <= GOAL and inc <= GOAL and kept >= 0.999 else "no"
        spread = ""
        if len(row["rounds"][name]) > 1:  # each round measures direct and this target back to back
            losses = [1 - t / d for t, d in zip(row["rounds"][name], row["rounds"]["direct"])]
            spread = f" (rounds {min(losses):+.0%} to {max(losses):+.0%})"
        lag = row["lag"].get(name, 0.0)
        late = f" (done {lag:.1f} s after the rounds)" if lag >= 0.5 else ""
        return (f"{row[name][0]:.1f} | {row[name][1]:.2f} | {loss:+.1%} / {inc:+.1%}{spread} | {kept:.1%}{late} "
                f"| {met}")

    for row in rows:
        p_loss, p_inc = _slower(row, "proxy mode")
        cpu = " / ".join(f"{row[n][3]:.2f}" if n in row else "n/a"
                         for n in ("direct", SNIFF, "tap", "relay only", "proxy mode"))
        lines.append(
            f"| {row['workload']} | {row['batch']} | {row['mb']:.2f} | {row['mode']} | {row['direct'][0]:.1f} | "
            f"{row['direct'][1]:.2f} | {cells(row, SNIFF)} | {cells(row, 'tap')} | "
            f"{row['relay only'][0]:.1f} | {row['relay only'][1]:.2f} | {row['proxy mode'][0]:.1f} | "
            f"{row['proxy mode'][1]:.2f} | {p_loss:+.1%} / {p_inc:+.1%} | {cpu} |")
    if tap_out:
        lines += ["", "Recording taps' final counters (passive relay, then sniff):", ""]
        lines += [f"- `{line}`" for line in tap_out]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines + notes_beside(path)) + "\n")


if __name__ == "__main__":
    sys.exit(main())
