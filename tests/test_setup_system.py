"""``make test`` on a machine where tests/setup_system.sh cannot install anything (no root, no
passwordless sudo, no apt-get): the script says which tests will skip and why and lets pytest run;
under CI it is an error instead, and so is a marked test whose package is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from system_prereqs import missing_prerequisite

SCRIPT = Path(__file__).with_name("setup_system.sh")
NOTHING = "/nonexistent-splitlab-prefix"  # SPLITLAB_SYSTEM_PREFIX under which both packages are missing
SKIPPED = ("test_experiment_page_in_headless_chromium", "test_fashion_mnist_from_debian")


def run_script(env: dict, unprivileged: bool = False) -> subprocess.CompletedProcess:
    """The script on stdin (so a dropped user needs no access to the checkout); as ``nobody`` if asked."""
    cmd = ["bash", "-s"]
    if unprivileged and os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
    base = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run(cmd, stdin=SCRIPT.open("rb"), env=base | env, capture_output=True, text=True, timeout=60)


def unprivileged_user_available() -> bool:
    if os.geteuid() != 0:  # already unprivileged: only passwordless sudo would let it install
        return not (shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0)
    return shutil.which("setpriv") is not None


@pytest.mark.skipif(not unprivileged_user_available(), reason="needs root (for setpriv) or a user without sudo")
def test_without_root_the_script_names_the_skipped_tests_and_lets_pytest_run():
    done = run_script({"SPLITLAB_SYSTEM_PREFIX": NOTHING}, unprivileged=True)
    assert done.returncode == 0, done.stderr
    assert "not root, and no passwordless sudo" in done.stderr
    for name in SKIPPED:
        assert name in done.stderr
    # under CI the same situation is an error: nothing may skip there
    ci = run_script({"SPLITLAB_SYSTEM_PREFIX": NOTHING, "CI": "true"}, unprivileged=True)
    assert ci.returncode == 1 and "CI=true" in ci.stderr


def test_without_apt_get_the_script_says_so(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with the few tools the script calls, and no apt-get
    bin_dir.mkdir()
    for tool in ("id",):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "SPLITLAB_SYSTEM_PREFIX": NOTHING}
    done = subprocess.run([shutil.which("bash"), "-s"], stdin=SCRIPT.open("rb"), capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0 and "apt-get not found" in done.stderr and SKIPPED[0] in done.stderr


def test_nothing_missing_nothing_said(tmp_path):
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/chromium").write_text("#!/bin/sh\n")
    (tmp_path / "usr/bin/chromium").chmod(0o755)
    (tmp_path / "usr/share/datasets/fashion-mnist").mkdir(parents=True)
    done = run_script({"SPLITLAB_SYSTEM_PREFIX": str(tmp_path), "CI": "true"})
    assert done.returncode == 0 and done.stdout == done.stderr == ""


def test_a_missing_package_skips_a_marked_test_but_fails_it_under_ci(tmp_path):
    missing = str(tmp_path / "chromium")
    assert missing_prerequisite(str(tmp_path), "x", env={}) is None
    kind, message = missing_prerequisite(missing, "chromium", env={})
    assert kind == "skip" and missing in message and "chromium" in message
    assert missing_prerequisite(missing, "chromium", env={"CI": "true"})[0] == "fail"
