"""The membership suite on the harness, from benchmarks/configs/membership-quick.yaml: its trials,
and one seed of it at a small training budget, run end to end on the local executor and on a local Ray instance (same metrics on both)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks.__main__ import main as benchmarks_main
from benchmarks.suites import membership
from models.errors import SplitlabError

QUICK = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "membership-quick.yaml"


def quick() -> dict:
    return yaml.safe_load(QUICK.read_text())


def test_quick_config_expands_to_every_attack_and_seed():
    trials = membership.trials(quick())
    assert {t.attack["name"] for t in trials} == {"membership/threshold", "membership/shokri", "membership/lira"}
    assert sorted({t.seed for t in trials}) == [0, 1] and len(trials) == 6
    assert len({t.trial_id for t in trials}) == 6


@pytest.mark.parametrize("change, message", [
    (lambda c: c["attacks"].append({"name": "inversion/whitebox"}), "runs membership attacks"),
    (lambda c: c["attacks"].append({"name": "membership/nope"}), "unknown attack 'membership/nope'"),
    (lambda c: c["attacks"][0]["params"].update(metric="vibes"), "metric"),
    (lambda c: c["targets"][0]["options"].update(seed=3), "seed comes from the config's 'seeds'"),
    (lambda c: c["targets"][0].update(options=[1]), "'options' must be a mapping"),
    (lambda c: c.update(evaluation={"members": 0, "non_members": 5}), "'evaluation'"),
    (lambda c: c["targets"][0].pop("arch"), "missing arch"),
])
def test_bad_configs_fail_before_any_trial_runs(change, message):
    config = quick()
    change(config)
    with pytest.raises(SplitlabError, match=message):
        membership.trials(config)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One seed of the quick config at a small budget, run on the local executor."""
    tmp = tmp_path_factory.mktemp("membership")
    config = quick()
    config.update(seeds=[0], out=str(tmp / "out"), evaluation={"members": 60, "non_members": 60})
    config["targets"][0]["options"]["epochs"] = 4
    for attack in config["attacks"]:  # the quick config's attacks, with fewer shadow / reference models
        attack["params"].update({"membership/shokri": {"shadow_models": 1, "epochs": 50},
                                 "membership/lira": {"reference_models": 2}}.get(attack["name"], {}))
    path = tmp / "membership.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["run", str(path), "--artifacts", str(tmp / "art"), "--no-progress"]
    return tmp, argv, benchmarks_main(argv)


def _rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "trials.jsonl").read_text().splitlines()]


def test_quick_suite_one_seed_small_budget_runs_end_to_end(small_run, capsys):
    tmp, argv, code = small_run
    assert code == 0
    rows = _rows(tmp / "out")
    assert [r["status"] for r in rows] == ["ok"] * 3
    for r in rows:
        m = r["metrics"]
        assert 0 <= m["auc"] <= 1 and 0 <= m["tpr_at_1pct_fpr"] <= 1 and m["members"] == m["non_members"] == 60
        assert m["target_queries"] >= 120 and m["target_train_accuracy"] > 0.5
    assert len({r["metrics"]["target_model"] for r in rows}) == 1  # one target, trained once, shared
    assert rows[0]["metrics"]["threshold_source"] == "given"  # the threshold came from shadow data
    text = (tmp / "out" / "report.md").read_text()
    for label in ("threshold-loss", "shokri", "lira-offline"):
        assert f"| mia-cnn-digits {label} | membership/" in text
    assert (tmp / "out" / "membership.png").stat().st_size > 1000
    capsys.readouterr()
    assert benchmarks_main(argv) == 0
    assert "3 trial(s), 3 already finished" in capsys.readouterr().out


def test_ray_gives_the_same_metrics_as_local(small_run, tmp_path):
    """The same trials on a local Ray instance, with a results store of their own but the local run's
    artifact store: the target, shadow and reference models are already trained there, so the Ray
    tasks only fit the attacks and score (the executor must not change a metric)."""
    pytest.importorskip("ray")
    tmp, argv, _ = small_run
    # one worker: a Ray worker process loading torch costs more here than the three scorings
    code = benchmarks_main([*argv, "--executor", "ray", "--workers", "1", "--store", str(tmp_path / "ray.sqlite"),
                            "--out", str(tmp_path / "out")])
    assert code == 0
    local, ray_rows = _rows(tmp / "out"), _rows(tmp_path / "out")
    assert {r["executor"] for r in ray_rows} == {"ray"} and len(ray_rows) == 3

    def metrics(rows):  # without timings (``*_seconds``)
        return {r["trial"]: {k: v for k, v in r["metrics"].items() if not k.endswith("_seconds")} for r in rows}

    assert metrics(ray_rows) == metrics(local)
