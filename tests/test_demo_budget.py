"""``make demo`` hands its attack budget to ``attacker invert`` after a minute of training and
serving: a misspelt or invalid parameter there must fail here, in a second, instead. Each
split point's flags must get past the CLI's parameter checks (the run then stops at the missing
capture store, which comes after them)."""

from __future__ import annotations

import pytest

from attacker.__main__ import main
from benchmarks.demo_live import ATTACKS, BLACKBOX_BUDGET, attack_args


@pytest.mark.parametrize("split", sorted(BLACKBOX_BUDGET))
@pytest.mark.parametrize("method", ATTACKS)
def test_demo_attack_flags_pass_the_cli_checks(tmp_path, capsys, split, method):
    argv = ["invert", "--method", method, "--deployment", "d", "--store", str(tmp_path / "none"),
            "--out", str(tmp_path / "out"), "--edge", "http://127.0.0.1:9", *attack_args(method, split, "mnist")]
    assert main(argv) == 2
    assert "no capture store" in capsys.readouterr().err
