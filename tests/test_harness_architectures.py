"""The architecture study (benchmarks/suites/architectures.py) on the harness: its trials are the
gradient, membership and attribute suites' own for every architecture, bad configs fail before
anything runs, the report's findings compare the right sides, and a cut-down quick config runs end
to end (gradient inversion far above the blank image; one CIFAR-10 target shared by the families)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks.__main__ import main as benchmarks_main
from benchmarks.suites import architectures, gradient, load_suite
from models.errors import SplitlabError

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"


def quick() -> dict:
    return yaml.safe_load((CONFIGS / "architectures-quick.yaml").read_text())


def test_trials_are_the_family_suites_trials_for_every_architecture():
    config = quick()
    trials = architectures.trials(config)
    families = [t.target["family"] for t in trials]
    assert families == sorted(families, key=architectures.FAMILIES.index)  # family by family, for --only
    per_arch = {f: {t.target["architecture"] for t in trials if t.target["family"] == f} for f in architectures.FAMILIES}
    assert all(archs == {"lenet5", "aia-lenet"} for archs in per_arch.values())
    assert len(trials) == 2 * (2 * 2 * 2 + 2 + 2) and len({t.trial_id for t in trials}) == len(trials)
    # a study trial hands the family suite exactly the trial that suite would have made itself
    family, own = architectures.study_part(trials[0])
    sub = architectures.family_configs(config, "lenet5", architectures.architectures(config)[0][1])["gradient"]
    assert family == "gradient" and own.trial_id == gradient.trials(sub)[0].trial_id
    # 'first' / 'last' name each architecture's own split points
    aia = {(t.target["architecture"], t.target["observed"]): t.attack["observe"] for t in trials
           if t.target["family"] == "attribute"}
    assert aia[("lenet5", "first")] == "conv1" and aia[("lenet5", "last")] == "fc2"
    # the gradient suite's seed-0 model is the seed-0 membership target: the same options
    targets = {t.target["family"]: t.target["options"] for t in trials if t.target["family"] != "attribute"}
    assert targets["gradient"] == targets["membership"]
    # an entry's options are the architecture's budget: over the CIFAR-10 training and the UTKFace one
    config["architectures"] = [{"arch": "lenet5", "options": {"epochs": 7, "batch_size": 16}}, "aia-lenet"]
    options = {(t.target["family"], t.target["architecture"]): t.target["options"] for t in architectures.trials(config)}
    assert options[("gradient", "lenet5")] == {**config["training"], "epochs": 7, "batch_size": 16}
    assert options[("attribute", "lenet5")] == {**config["attribute"]["training"], "epochs": 7, "batch_size": 16}
    assert options[("attribute", "aia-lenet")] == config["attribute"]["training"]
    full = yaml.safe_load((CONFIGS / "architectures.yaml").read_text())
    assert {t.target["family"] for t in architectures.trials(full)} == set(architectures.FAMILIES)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["architectures"].append("resnet-9000"), "unknown architecture 'resnet-9000'"),
    (lambda c: c["architectures"].append("lenet5"), "listed twice"),
    (lambda c: c["architectures"].append({"arch": "mia-cnn", "options": {"seed": 1}}), "seed comes from"),
    (lambda c: c["attribute"].update(observations=["conv9"]), "observation 'conv9'"),
    (lambda c: c["gradient"].update(batch_size=[1]), "unknown batch_size"),
    (lambda c: c["membership"]["attacks"].append({"name": "gradient/dlg"}), "runs membership attacks"),
    (lambda c: c.update(compare=[["lenet5", "vit-huge"]]), "does not list: vit-huge"),
    (lambda c: c.update(colour="blue"), "unknown colour"),
    (lambda c: c.update(morph={"paper_psnr": ["high"]}), "paper_psnr"),
    (lambda c: c["membership"].update(architectures=["resnet18"]), "the config's architectures"),
    (lambda c: [c.pop(f) for f in architectures.FAMILIES], "at least one of the sections"),
])
def test_bad_configs_fail_before_any_trial_runs(change, message):
    config = quick()
    change(config)
    with pytest.raises(SplitlabError, match=message):
        architectures.trials(config)


def _result(arch: str, family: str, seed: int, metrics: dict, label: str, **target) -> dict:
    return {"status": "ok", "seed": seed, "seconds": 2.0, "label": f"{family} {arch} {label} seed {seed}",
            "target": {"family": family, "architecture": arch, **target}, "attack": {"attribute": "race"},
            "metrics": metrics}


def test_findings_compare_the_transformer_with_the_cnn_and_a_step_with_the_one_before(tmp_path):
    config = {"architectures": ["cnn", {"arch": "vit", "options": {"epochs": 20, "batch_size": 64}}, "morph-00-a",
                                "morph-01-b"], "compare": [["cnn", "vit"]],
              "steps": {"morph-01-b": "patchify stem"}, "morph": {"attack": "ig", "batch_size": 1, "paper_psnr": [10.58, 10.74]}}
    psnr = {"cnn": (10, 11), "vit": (30, 31), "morph-00-a": (12, 13), "morph-01-b": (12.6, 12.7)}
    results = [_result(arch, "gradient", s, {"psnr_mean": v, "mse_mean": 0.1, "ssim_mean": 0.2, "blank_psnr": 8.0,
                                            "target_test_accuracy": 0.5, "label_accuracy": 1.0,
                                            "target_model": f"{arch}-s0", "parameters": 1000},
                       "b1 all ig", batch_size=1)
               for arch, vs in psnr.items() for s, v in enumerate(vs)]
    from unittest import mock

    with mock.patch("models.zoo.architecture_names", return_value=list(psnr)):
        body = "\n".join(architectures.report(results, tmp_path, config))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in body.splitlines() if "raises" in line or "leak" in line}
    assert "| 10.500 ± 0.707 | 30.500 ± 0.707 | holds (beyond the spread" in rows["transformers leak more than CNNs: vit vs cnn"]
    assert "holds (within the spread" in rows["patchify stem raises GIA success: morph-01-b vs morph-00-a"]
    assert "| 1. morph-00-a | 0.5000 | 0.1000 ± 0.0000 | 12.50 ± 0.71 | not computed |" in body  # one model's accuracy
    assert "| 12.65 ± 0.07 | not computed | 0.2000 ± 0.0000 | 10.74 |" in body  # the paper's PSNR beside ours
    assert "with its own budget" in body  # vit's options differ from the others' training
    assert "| vit | 1,000 | 20 epochs, Adam lr 0.001, batch 64, cosine | 1 |" in body
    assert "| cnn | 1,000 | 5 epochs, Adam lr 0.001, batch 128, cosine | 1 |" in body  # TrainOptions' defaults
    assert (tmp_path / "morph-psnr.png").stat().st_size > 1000
    assert architectures.verdict([3.0], [2.0]) == "does not hold (one seed: no spread to judge by)"


def test_cut_down_quick_suite_runs_end_to_end(tmp_path):
    config = quick()
    config.update(out=str(tmp_path / "out"), architectures=["aia-lenet"], compare=[],
                  training={"epochs": 1, "limit": 200, "batch_size": 32, "lr": 0.002})
    config["gradient"].update(seeds=1, batch_sizes=[1], attacks=[config["gradient"]["attacks"][0]])
    config["membership"].update(evaluation={"members": 60, "non_members": 60},  # LiRA: tests/test_harness_membership.py
                                attacks=config["membership"]["attacks"][:1])
    config["attribute"].update(observations=["last"], aux_limit=300, victims=200, params={"epochs": 3},
                               training={"epochs": 1, "limit": 300, "batch_size": 32})
    path = tmp_path / "architectures.yaml"
    path.write_text(yaml.safe_dump(config))
    assert benchmarks_main(["run", str(path), "--artifacts", str(tmp_path / "art"), "--no-progress",
                            "--workers", "1"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "trials.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"] * 3, [r["error"] for r in rows]
    by = {(r["target"]["family"], r["label"].split(" seed")[0].rsplit(" ", 1)[-1]): r["metrics"] for r in rows}
    gia = by[("gradient", "ig")]
    assert gia["psnr_mean"] > gia["blank_psnr"] + 6  # far above the blank image
    assert by[("membership", "threshold-loss")]["target_model"] == gia["target_model"]  # one CIFAR-10 target
    assert 0 <= by[("membership", "threshold-loss")]["auc"] <= 1 and gia["parameters"] > 10_000
    assert by[("attribute", "race")]["victims"] == 200
    report = (tmp_path / "out" / "report.md").read_text()
    for section in ("## Task accuracy", "## Membership inference", "## Attribute inference",
                    "## Gradient inversion (the paper's", "## Time per trial"):
        assert section in report
    assert load_suite("architectures") is architectures
