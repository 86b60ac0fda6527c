"""Tests that need a system package (`tests/setup_system.sh` installs them on Debian with root).

On a researcher's machine without root or apt-get those packages may be missing: such a test
skips, naming the file it needs and the package. Under CI (``CI=true``) nothing may skip, so the
same test fails there with that message instead of silently passing as skipped.

Mark a test ``@pytest.mark.system("/usr/bin/chromium", "chromium")``; ``conftest.py`` checks the
mark before the test's fixtures are set up (no live services are started for a test that skips).
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def in_ci(env=None) -> bool:
    return (os.environ if env is None else env).get("CI", "").lower() in ("1", "true", "yes")


def missing_prerequisite(path: str, package: str, env=None) -> tuple[str, str] | None:
    """None when ``path`` exists, else ("skip" or "fail" under CI, the message)."""
    if Path(path).exists():
        return None
    message = (f"{path} missing (Debian package {package}): tests/setup_system.sh installs it when run as root "
               "or with passwordless sudo")
    return ("fail", f"CI=true, where no test may skip: {message}") if in_ci(env) else ("skip", message)
