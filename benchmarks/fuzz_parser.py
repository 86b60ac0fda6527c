"""Coverage-guided fuzzing of the cloud's request parser, tensor decoder and request validation.

    python -m benchmarks.fuzz_parser [--seconds 60] [--max-len 4096] [--rss-limit-mb 2048] [--out FILE]

Runs atheris (libFuzzer for Python) for a fixed time on the properties of
:mod:`benchmarks.fuzz_targets`: each input is a would-be serialized ``InferRequest``; the
zero-copy parser must agree with protobuf, decoding must give an array of exactly the tensor's
shape or a ``WireError``, validation a batch for the deployment or ``INVALID_ARGUMENT``. Only
``protos`` and ``cloud_server.validation`` are instrumented, so coverage counts edges of the code
under test. The corpus starts from valid requests of every wire dtype.

libFuzzer stops at the first crash (a broken property, an unexpected exception, a timeout or a
process over ``--rss-limit-mb``, which is how an allocation beyond the limits shows) and writes
the input to ``crash-*`` in the artifact folder; the report names it, and
``python -m benchmarks.fuzz_parser --replay FILE`` runs it again with the traceback. The report
(executions, executions/s, coverage edges, features, corpus size, peak RSS, crashes) is printed
and written as a Markdown table to ``--out``. atheris ships wheels for CPython 3.11 on x86-64
Linux (``pip install 'atheris==3.0.0'``, a dev dependency).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz_parser.md"
INSTRUMENTED = ["protos", "cloud_server.validation", "cloud_server.errors", "benchmarks.fuzz_targets"]
_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.M)
_PROGRESS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", re.M)


def seed_corpus(folder: Path) -> int:
    """Valid requests for the fuzz deployment in every wire dtype, and a few near misses."""
    import numpy as np

    from benchmarks.fuzz_targets import DEPLOYMENT
    from protos import wire

    x = np.linspace(-1, 1, 2 * np.prod(DEPLOYMENT.feature_shape), dtype=np.float32)
    x = x.reshape(2, *DEPLOYMENT.feature_shape)
    seeds = [wire.infer_request_bytes(DEPLOYMENT.id, f"seed-{d}", x, d) for d in wire.WIRE_DTYPES]
    seeds += [wire.infer_request_bytes(DEPLOYMENT.id, "bad-shape", x[0], "float32"),
              wire.infer_request_bytes("other", "", x[:, :1], "float16"), b""]
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds):
        (folder / f"seed-{i}").write_bytes(data)
    return len(seeds)


def child(libfuzzer_args: list[str]) -> None:
    """The fuzzing process: instrument the code under test, then hand control to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        from benchmarks.fuzz_targets import check_request_bytes
    atheris.Setup([sys.argv[0], *libfuzzer_args], check_request_bytes)
    atheris.Fuzz()


def parse_output(text: str) -> dict:
    """libFuzzer's final stats and last progress line."""
    stats = {k: int(v) for k, v in _STAT.findall(text)}
    progress = _PROGRESS.findall(text)
    if progress:
        _, cov, ft, corp = progress[-1]
        stats.update(cov=int(cov), ft=int(ft), corpus=int(corp))
    return stats


def fuzz(seconds: int, max_len: int, rss_limit_mb: int, work: Path) -> dict:
    try:
        import atheris  # noqa: F401
    except ImportError:
        raise SystemExit("atheris is not installed: pip install 'atheris==3.0.0' (wheels for CPython 3.11, "
                         "x86-64 Linux)") from None
    corpus, crashes = work / "corpus", work / "crashes"
    seeds = seed_corpus(corpus)
    crashes.mkdir(parents=True, exist_ok=True)
    args = [str(corpus), f"-max_total_time={seconds}", f"-max_len={max_len}", f"-rss_limit_mb={rss_limit_mb}",
            "-timeout=10", "-print_final_stats=1", f"-artifact_prefix={crashes}/"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fuzz_parser", "--child", *args],
                          capture_output=True, text=True, timeout=seconds + 120)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    stats = parse_output(out)
    found = sorted(str(p) for p in crashes.iterdir())
    result = {"seconds": seconds, "load": load, "wall_s": round(wall, 1), "exit_code": proc.returncode, "seeds": seeds,
              "executions": stats.get("number_of_executed_units", 0),
              "exec_per_s": round(stats.get("number_of_executed_units", 0) / max(wall, 1e-9)),
              "cov": stats.get("cov", 0), "ft": stats.get("ft", 0), "corpus": stats.get("corpus", 0),
              "peak_rss_mb": stats.get("peak_rss_mb", 0), "crashes": found}
    if proc.returncode != 0 or found:
        result["log_tail"] = out[-4000:]
    return result


def report(r: dict) -> str:
    crashes = ", ".join(Path(c).name for c in r["crashes"]) or "none"
    return "\n".join([
        "# Fuzzing the request parser, tensor decoder and validation (atheris)",
        "",
        f"`python -m benchmarks.fuzz_parser --seconds {r['seconds']}` on {platform.machine()}, "
        f"Python {platform.python_version()}, one process, {os.cpu_count()} cores, load average "
        f"{r['load']:.1f} at the start (exec/s falls with the load; the fuzzer is single-threaded).",
        "",
        "| seconds | executions | exec/s | coverage edges | features | corpus | peak RSS MB | crashes |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['seconds']} | {r['executions']} | {r['exec_per_s']} | {r['cov']} | {r['ft']} | {r['corpus']} "
        f"| {r['peak_rss_mb']} | {crashes} |",
        "",
        "Properties (benchmarks/fuzz_targets.py): the zero-copy parser agrees with protobuf on every input; "
        "a decoded tensor has exactly its shape, is finite and at most 4 bytes per byte received, or the "
        "decoder raises WireError with a short message; validation gives a batch of the deployment's "
        "feature shape or INVALID_ARGUMENT. Coverage counts edges in protos/ and cloud_server/validation.py.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz_parser", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time (default 60)")
    parser.add_argument("--max-len", type=int, default=4096, help="largest input in bytes (default 4096)")
    parser.add_argument("--rss-limit-mb", type=int, default=2048,
                        help="a process over this much memory is a crash (default 2048)")
    parser.add_argument("--work", type=Path, default=None, help="corpus and crash folder (default: a temporary one)")
    parser.add_argument("--out", default=str(RESULTS), help="Markdown report ('' for none)")
    parser.add_argument("--replay", type=Path, default=None, help="run one saved input (a crash-* file) and exit")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error(f"--seconds must be at least 1, got {args.seconds}")
    if args.replay is not None:
        from benchmarks.fuzz_targets import check_request_bytes

        check_request_bytes(args.replay.read_bytes())
        print(f"{args.replay}: every property holds")
        return 0
    with tempfile.TemporaryDirectory(prefix="splitlab-fuzz-") as tmp:
        work = args.work or Path(tmp)
        r = fuzz(args.seconds, args.max_len, args.rss_limit_mb, work)
        if r["crashes"] and args.work is None:  # keep the inputs that broke something
            keep = Path(tempfile.mkdtemp(prefix="splitlab-fuzz-crashes-"))
            for c in r["crashes"]:
                target = keep / Path(c).name
                target.write_bytes(Path(c).read_bytes())
            r["crashes"] = [str(keep / Path(c).name) for c in r["crashes"]]
    text = report(r)
    print(text)
    if r.get("log_tail"):
        print(r["log_tail"], file=sys.stderr)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if r["crashes"] or r["exit_code"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
