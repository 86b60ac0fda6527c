"""Run the services of ``deploy/docker-compose.yml`` as local processes on loopback.

No Docker engine is needed: each service is started with the compose file's own command and
environment, with the container addresses mapped onto this machine (service names -> 127.0.0.1,
fixed container ports -> free loopback ports, volume paths -> folders under ``root``). Health is
checked with the same ``deploy/healthcheck.py`` targets the compose file uses, and ``stop()``
sends SIGTERM to every service and reports their exit codes. ``make demo`` and the live
end-to-end test both use it, so what they exercise is what ``docker compose up`` runs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
COMPOSE = PROJECT / "deploy" / "docker-compose.yml"
HEALTHCHECK = PROJECT / "deploy" / "healthcheck.py"
BOOTSTRAP = PROJECT / "deploy" / "bootstrap.py"
ORDER = ["cloud", "attacker", "edge"]
CONTAINER_PORTS = {"cloud": 50051, "tap": 50052, "tap_admin": 50053, "api": 8000, "edge": 8001}
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_services(path: Path = COMPOSE, env: dict | None = None) -> dict:
    """The compose file's services with ``${VAR:-default}`` resolved from ``env`` (else defaults)."""
    env = os.environ if env is None else env
    text = _VAR.sub(lambda m: env.get(m.group(1), m.group(2) or ""), path.read_text())
    return yaml.safe_load(text)["services"]


class LocalStack:
    """The init step and the three services of the compose file, as processes under ``root``."""

    def __init__(self, root: Path, data_root: Path | None = None, extra_env: dict | None = None):
        self.root = Path(root).resolve()
        self.ports = {name: free_port() for name in CONTAINER_PORTS}
        self.paths = {"/artifacts": self.root / "artifacts", "/captures": self.root / "captures",
                      "/data": Path(data_root or os.environ.get("SPLITLAB_DATA", PROJECT.parent / "shared" / "datasets"))}
        for p in self.paths.values():
            p.mkdir(parents=True, exist_ok=True)
        self.extra_env = extra_env or {}
        self.services = compose_services()
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    # --- addresses ------------------------------------------------------------------------------
    @property
    def cloud(self) -> str:
        return f"127.0.0.1:{self.ports['cloud']}"

    @property
    def tap(self) -> str:
        return f"127.0.0.1:{self.ports['tap']}"

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['edge']}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def localise(self, value: str) -> str:
        """A compose value with container hosts, ports and volume paths mapped onto this machine."""
        value = str(value)
        hosts = {"cloud:50051": self.cloud, "attacker:50052": self.tap, "edge:8001": f"127.0.0.1:{self.ports['edge']}",
                 "0.0.0.0:50052": self.tap, "0.0.0.0:50053": f"127.0.0.1:{self.ports['tap_admin']}"}
        for name, port in CONTAINER_PORTS.items():  # health-check targets inside a container
            hosts[f"127.0.0.1:{port}"] = f"127.0.0.1:{self.ports[name]}"
        for old, new in hosts.items():
            value = value.replace(old, new)
        if value == "0.0.0.0":
            return "127.0.0.1"
        for name, port in CONTAINER_PORTS.items():
            if value == str(port):
                return str(self.ports[name])
        for container, local in self.paths.items():
            if value == container or value.startswith(container + "/"):
                return str(local) + value[len(container):]
        return value

    def service_env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in (self.services[name].get("environment") or {}).items():
            env[key] = "" if value is None else self.localise(value)
        env.update(self.extra_env)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def health_targets(self, name: str) -> list[str]:
        test = self.services[name]["healthcheck"]["test"]
        return [self.localise(t) for t in test if t.startswith(("grpc://", "http://"))]

    # --- lifecycle ------------------------------------------------------------------------------
    def init(self, **settings: str) -> None:
        """The compose ``init`` step (train and deploy a default model unless the store has one)."""
        env = self.service_env("init")
        env.update(settings)
        subprocess.run([sys.executable, str(BOOTSTRAP)], env=env, check=True)

    def start(self, timeout: float = 120.0, progress=print) -> None:
        """Start cloud, attacker and edge in order, each once the one before it is healthy.

        If one fails to start or become healthy, the ones already started are stopped (nothing is
        left running) and the error is raised.
        """
        try:
            self._start_all(timeout, progress)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, timeout: float, progress) -> None:
        for name in ORDER:
            command = self.services[name]["command"]
            self.logs[name] = self.root / f"{name}.log"
            progress(f"starting {name}: {' '.join(command)}")
            with open(self.logs[name], "wb") as log:
                self.procs[name] = subprocess.Popen(command, env=self.service_env(name), stdout=log,
                                                    stderr=subprocess.STDOUT, cwd=self.root)
            self.wait_healthy(name, timeout)

    def wait_healthy(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        targets = self.health_targets(name)
        while True:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{self.log(name)[-3000:]}")
            check = subprocess.run([sys.executable, str(HEALTHCHECK), *targets], capture_output=True, text=True)
            if check.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not healthy after {timeout:.0f} s ({check.stdout}{check.stderr}):\n"
                                   f"{self.log(name)[-3000:]}")
            time.sleep(0.5)

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every service (edge first), wait for them; their exit codes (None: killed)."""
        codes: dict[str, int | None] = {}
        for name in reversed(ORDER):
            proc = self.procs.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes[name] = None
        return codes

    def __enter__(self) -> "LocalStack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
