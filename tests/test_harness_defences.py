"""The defences suite on the harness (benchmarks/configs/defences-quick.yaml): its trials, bad configs
failing before anything runs, the Pareto front, and a cut-down run end to end on the local executor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks.__main__ import main as benchmarks_main
from benchmarks.suites import defences
from models.errors import SplitlabError

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"


def quick() -> dict:
    return yaml.safe_load((CONFIGS / "defences-quick.yaml").read_text())


def test_configs_expand_to_every_target_defence_and_seed():
    trials = defences.trials(quick())
    assert [t.target["defence"] for t in trials] == ["none", "l2-output", "dropout0.5", "gaussian0.5"]
    assert trials[1].target["options"]["weight_decay_scope"] == "output" and trials[2].target["feature"][0]["p"] == 0.5
    full = yaml.safe_load((CONFIGS / "defences.yaml").read_text())
    assert len(defences.trials(full)) == 2 * len(full["defences"]) * 3
    for reduced in ("defences-mnist.yaml", "defences-membership.yaml"):
        assert len(defences.trials(yaml.safe_load((CONFIGS / reduced).read_text()))) > 0


@pytest.mark.parametrize("change, message", [
    (lambda c: c["defences"].append({"name": "bad", "feature": "gaussian:sigma=-1"}), "sigma"),
    (lambda c: c["defences"].append({"name": "bad", "training": {"weight_decay": -1.0}}), "weight-decay"),
    (lambda c: c["defences"].append({"name": "bad", "training": {"seed": 3}}), "TrainOptions defence fields"),
    (lambda c: c["targets"][0].update(splits=["conv9"]), "split points"),
    (lambda c: c["membership"].append({"name": "inversion/whitebox"}), "membership attacks"),
    (lambda c: c["whitebox"].update(adaptive=True), "set by the suite"),
    (lambda c: c["whitebox"].update(eot_samples=0), "eot_samples"),
    (lambda c: c["blackbox"].update(aux=1), "aux"),
    (lambda c: c["queryfree"].update(aux=True), "queryfree: 'aux'"),
    (lambda c: c["queryfree"].update(shadow="bigger"), "shadow"),
    (lambda c: c["queryfree"].update(whitebox={"adaptive": True}), "whitebox.adaptive"),
    (lambda c: c.update(evaluation={"images": 0}), "'evaluation'"),
])
def test_bad_configs_fail_before_any_trial_runs(change, message):
    config = quick()
    change(config)
    with pytest.raises(SplitlabError, match=message):
        defences.trials(config)


def test_pareto_front_keeps_the_defences_nothing_beats_on_both():
    # (attack success, accuracy): b beats a on both; c is less accurate but protects more
    points = [(0.9, 0.80), (0.8, 0.85), (0.5, 0.70), (0.6, 0.60)]
    assert defences.pareto_front(points) == [2, 1]


def test_cut_down_quick_suite_runs_end_to_end(tmp_path):
    config = quick()
    config.update(out=str(tmp_path / "out"), evaluation={"members": 40, "non_members": 40, "images": 4,
                                                         "accuracy_images": 100})
    config["defences"] = [d for d in config["defences"] if d["name"] in ("none", "dropout0.5")]
    config["targets"][0]["options"]["epochs"] = 4
    config["targets"][0]["splits"] = ["conv1"]
    config["whitebox"] = {"iterations": 60, "eot_samples": 2}
    config["blackbox"] = {"epochs": 1, "aux": 64}
    config["queryfree"] = {"epochs": 1, "aux": 64, "whitebox": {"iterations": 20}}
    path = tmp_path / "defences.yaml"
    path.write_text(yaml.safe_dump(config))
    assert benchmarks_main(["run", str(path), "--artifacts", str(tmp_path / "art"), "--no-progress",
                            "--workers", "1"]) == 0
    rows = {json.loads(line)["target"]["defence"]: json.loads(line)
            for line in (tmp_path / "out" / "trials.jsonl").read_text().splitlines()}
    assert [r["status"] for r in rows.values()] == ["ok", "ok"], [r.get("error") for r in rows.values()]
    none, drop = rows["none"]["metrics"], rows["dropout0.5"]["metrics"]
    assert 0 <= none["threshold_auc"] <= 1 and none["train_seconds"] > 0
    # undefended: adaptive is the naive attack; dropout lowers the naive PSNR and the adaptive one recovers
    assert none["whitebox_adaptive@conv1_psnr"] == pytest.approx(none["whitebox_naive@conv1_psnr"])
    assert drop["whitebox_naive@conv1_psnr"] < none["whitebox_naive@conv1_psnr"] - 5
    assert drop["whitebox_adaptive@conv1_psnr"] > drop["whitebox_naive@conv1_psnr"] + 5
    # query-free: an undefended deployment's adaptive figures are the naive ones; dropout's are its own
    assert none["queryfree_adaptive@conv1_psnr"] == none["queryfree_naive@conv1_psnr"] > 0
    assert drop["queryfree_adaptive@conv1_psnr"] != drop["queryfree_naive@conv1_psnr"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## lenet5-digits" in report and "WB conv1 PSNR adaptive" in report and "QF conv1 PSNR naive" in report
    assert (tmp_path / "out" / "defences-lenet5-digits.png").is_file()
