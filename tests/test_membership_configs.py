"""The membership reproduction configs (membership-003, membership-compare-cifar10) expand into
their trials, share the CIFAR-10 target, and their published rows name a target and an attack."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.suites import membership
from models.errors import SplitlabError

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"


def load(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def test_reproduction_configs_expand_and_share_the_cifar10_target():
    table, compare = (membership.trials(load(n)) for n in ("membership-003", "membership-compare-cifar10"))
    assert len(table) == 18 and len(compare) == 12
    targets = {t.target["name"]: t.target for t in table}
    for name in ("cifar10-overfit", "cifar10-memorised"):  # one stored model each, for both configs
        assert [t.target for t in compare if t.target["name"] == name][0] == targets[name]
    published = load("membership-003")["published"]
    assert len(published) == 18
    for row in published:  # a paper row is set beside a target trained for the paper's epochs
        if "epochs)" in row["source"]:
            epochs = int(row["source"].split("(")[1].split()[0])
            if row["target"].startswith("cifar10"):
                assert targets[row["target"]]["options"]["epochs"] == epochs, row["source"]


@pytest.mark.parametrize("row, message", [
    ({"source": "x", "target": "nope", "attack": "shokri-all"}, "must be a target name"),
    ({"source": "x", "target": "mnist-overfit", "attack": "shokri-all", "acc": 0.5}, "unknown acc"),
    ({"source": "x", "target": "mnist-overfit", "attack": "shokri-all", "auc": "high"}, "must be numbers"),
])
def test_published_rows_are_checked(row, message):
    config = load("membership-003")
    config["published"] = [row]
    with pytest.raises(SplitlabError, match=message):
        membership.trials(config)
