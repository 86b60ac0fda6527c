"""The benchmark harness: trial ids, the results store, reports, and a small training suite run end
to end on the local executor and on a local Ray instance (same metrics on both)."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from benchmarks import training
from benchmarks.__main__ import main as benchmarks_main
from benchmarks.harness import report
from benchmarks.harness.executors import LOCAL_START_ATTEMPTS, LocalExecutor, RayExecutor, machine_cores, run_trial
from benchmarks.harness.spec import Context, Trial, expand, seeds_of
from benchmarks.harness.store import ResultsStore
from models.errors import SplitlabError

TARGET = {"id": "lenet5-digits-h", "arch": "lenet5", "dataset": "digits",
          "options": {"epochs": 3, "lr": 0.005, "batch_size": 64, "scheme": "full", "eval_each_epoch": True}}
BROKEN = {"id": "broken", "arch": "no-such-arch", "dataset": "digits"}


def test_trial_id_is_a_stable_hash_of_the_spec_only():
    a = Trial.make("s", {"x": 1, "y": [1, 2]}, {"name": "f/n", "p": 0.5}, 3, label="one")
    b = Trial.make("s", {"y": [1, 2], "x": 1}, {"p": 0.5, "name": "f/n"}, 3, label="other")
    assert a.trial_id == b.trial_id and len(a.trial_id) == 16
    assert a.trial_id == "58ab8d7bd92991ae"  # ids key the results store: they must not drift between versions
    for other in (Trial.make("s", {"x": 2, "y": [1, 2]}, a.attack, 3), Trial.make("s", a.target, a.attack, 4),
                  Trial.make("t", a.target, a.attack, 3), a.on("cuda")):
        assert other.trial_id != a.trial_id
    assert Trial.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_expand_is_the_product_in_config_order():
    trials = expand("s", [("t1", {"a": 1}), ("t2", {"a": 2})], [("x", {"name": "f/x"})], [0, 1])
    assert [t.label for t in trials] == ["t1 x seed 0", "t1 x seed 1", "t2 x seed 0", "t2 x seed 1"]
    assert len({t.trial_id for t in trials}) == 4
    assert seeds_of({"seeds": 3}) == [0, 1, 2] and seeds_of({}) == [0]
    for bad in ([], [1, 1], ["0"], 0.5):
        with pytest.raises(SplitlabError, match="seeds"):
            seeds_of({"seeds": bad})


def test_store_keeps_outcomes_and_only_ok_counts_as_finished(tmp_path):
    good, bad, never = (Trial.make("s", {"i": i}, None, 0, label=f"t{i}") for i in range(3))
    with ResultsStore(tmp_path / "r.sqlite") as store:
        for t in (good, bad):
            store.submit(t, "local")
        store.record(good, {"status": "ok", "metrics": {"auc": 0.75}, "seconds": 1.5, "versions": {"torch": "x"}})
        store.record(bad, {"status": "failed", "metrics": {}, "error": "ValueError: boom", "seconds": 0.1})
        assert store.finished([good.trial_id, bad.trial_id, never.trial_id]) == {good.trial_id}
    with ResultsStore(tmp_path / "r.sqlite") as store:  # survives reopening
        rows = store.rows([never, good, bad])
    assert [r["status"] for r in rows] == ["missing", "ok", "failed"]
    assert rows[1]["metrics"] == {"auc": 0.75} and rows[1]["seconds"] == 1.5 and rows[1]["executor"] == "local"
    assert rows[2]["error"] == "ValueError: boom" and rows[2]["label"] == "t1"


def test_report_helpers_and_a_notes_file_end_a_report_regenerated_whole(tmp_path):
    assert report.fmt([0.5]) == "0.5000" and report.fmt([]) == "-"
    mean, std = report.mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(std, 1.0)
    assert report.fmt([1.0, 2.0, 3.0], 1) == "2.0 ± 1.0"
    info = {"executor": "local processes", "device": "cpu", "ok": 1, "total": 1}
    notes = tmp_path / "notes.md"
    notes.write_text("## Notes\n\nmy analysis\n")
    path = report.write_report(tmp_path, "T", ["body one"], "cmd", info, notes=str(notes))
    path.write_text(path.read_text() + "a hand edit\n")
    report.write_report(tmp_path, "T", ["body two"], "cmd", info, notes=str(notes))
    text = path.read_text()
    assert "body two" in text and "body one" not in text and "a hand edit" not in text
    assert text.endswith("body two\n\n## Notes\n\nmy analysis\n")
    assert "my analysis" not in report.write_report(tmp_path, "T", ["b"], "cmd", info, notes=str(tmp_path / "none.md")).read_text()
    beside = tmp_path / "bench.md"
    (tmp_path / "bench.notes.md").write_text("why it is so\n")
    assert report.notes_beside(beside) == ["", "why it is so"]


def test_local_executor_never_oversubscribes_cores():
    cores = machine_cores()
    assert LocalExecutor(workers=64, threads=1).workers == cores
    assert LocalExecutor(workers=None, threads=cores).workers == 1
    assert LocalExecutor(workers=1, threads=1).workers == 1


class _SlowStartingRay:
    """Stands in for the ``ray`` module: ``init`` raises Ray's startup timeout ``fails`` times."""

    def __init__(self, fails: int):
        self.fails, self.inits, self.shutdowns = fails, 0, 0

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.fails:
            raise Exception("The current node timed out during startup. This could happen because ...")

    def shutdown(self):
        self.shutdowns += 1


def test_a_local_ray_start_that_times_out_is_made_again_then_fails(capsys):
    ray = _SlowStartingRay(fails=1)
    assert RayExecutor(workers=1)._init(ray) is True
    assert (ray.inits, ray.shutdowns) == (2, 1) and "starting it again" in capsys.readouterr().err
    ray = _SlowStartingRay(fails=LOCAL_START_ATTEMPTS)
    with pytest.raises(Exception, match="timed out during startup"):
        RayExecutor(workers=1)._init(ray)
    assert ray.inits == LOCAL_START_ATTEMPTS
    ray = _SlowStartingRay(fails=1)  # a cluster address: nothing is started here, so no retry
    with pytest.raises(Exception, match="timed out during startup"):
        RayExecutor(address="10.0.0.1:6379")._init(ray)
    assert ray.inits == 1


def test_run_trial_returns_a_failure_instead_of_raising(tmp_path):
    ctx = Context(artifacts=str(tmp_path))
    out = run_trial(Trial.make("training", BROKEN | {"options": {}}, None, 0).to_dict(), vars(ctx))
    assert out["status"] == "failed" and "no-such-arch" in out["error"] and out["metrics"] == {}
    out = run_trial(Trial.make("no-such-suite", {}, None, 0).to_dict(), vars(ctx))
    assert out["status"] == "failed" and "unknown harness suite 'no-such-suite'" in out["error"]


def _config(tmp_path, targets):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"suite": "training", "seeds": [0, 1], "out": str(tmp_path / "out"),
                                    "targets": targets}))
    return path


def _metrics(out_dir) -> dict:
    """Each ok trial's metrics without timings (``*_seconds``), by trial id."""
    rows = [json.loads(line) for line in (out_dir / "trials.jsonl").read_text().splitlines()]
    return {r["trial"]: {k: v for k, v in r["metrics"].items() if not k.endswith("_seconds")}
            for r in rows if r["status"] == "ok"}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harness")
    config = _config(tmp, [TARGET, BROKEN])
    code = benchmarks_main(["run", str(config), "--artifacts", str(tmp / "art"), "--no-progress"])
    return tmp, config, code


def test_suite_runs_records_failures_and_writes_outputs(local_run):
    tmp, _, code = local_run
    assert code == 1  # the broken target failed, the run went on
    out = tmp / "out"
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [(r["label"], r["status"]) for r in rows] == [
        ("lenet5-digits-h seed 0", "ok"), ("lenet5-digits-h seed 1", "ok"),
        ("broken seed 0", "failed"), ("broken seed 1", "failed")]
    for r in rows:
        assert {"suite", "trial", "attack", "target", "seed", "metrics", "seconds"} <= set(r)
    good = rows[:2]
    assert [r["metrics"]["model_id"] for r in good] == ["lenet5-digits-h", "lenet5-digits-h-s1"]
    assert all(0.5 < r["metrics"]["test_accuracy"] <= 1 and r["seconds"] > 0 for r in good)
    assert good[0]["metrics"]["test_accuracy"] != good[1]["metrics"]["test_accuracy"]  # the seed matters
    assert "no-such-arch" in rows[2]["error"]
    assert rows[0]["versions"]["torch"] and len(rows[0]["versions"]["commit"].split("-")[0]) == 40
    text = (out / "report.md").read_text()
    accs = [r["metrics"]["test_accuracy"] for r in good]
    mean, std = report.mean_std(accs)
    assert f"| lenet5-digits-h | lenet5 | digits | 0, 1 |" in text and f"{mean:.4f} ± {std:.4f}" in text
    assert "## Trials without results (2 of 4)" in text and "broken seed 1: failed" in text
    header = (out / "trials.csv").read_text().splitlines()[0].split(",")
    assert "metrics.test_accuracy" in header and "target.arch" in header
    assert (out / "training-curves.png").stat().st_size > 1000


def test_finished_trials_are_not_run_again(local_run, capsys):
    tmp, config, _ = local_run
    before = (tmp / "out" / "trials.jsonl").read_text()
    code = benchmarks_main(["run", str(config), "--artifacts", str(tmp / "art"), "--no-progress", "--only", "lenet5"])
    assert code == 0  # the selected trials are all finished
    assert "2 trial(s), 2 already finished" in capsys.readouterr().out
    assert (tmp / "out" / "trials.jsonl").read_text() == before  # nothing ran: same rows, same timings
    # the old command still works: python -m benchmarks.training --config ... (--retrain would be --fresh)
    assert training.main(["--config", str(config), "--artifacts", str(tmp / "art"), "--only", "lenet5",
                          "--report-only"]) == 0
    assert (tmp / "out" / "trials.jsonl").read_text() == before


def test_ray_gives_the_same_metrics_as_local(local_run, tmp_path):
    pytest.importorskip("ray")
    tmp, _, _ = local_run
    config = _config(tmp_path, [TARGET, BROKEN])
    code = benchmarks_main(["run", str(config), "--executor", "ray", "--workers", "2", "--only", "lenet5",
                            "--artifacts", str(tmp_path / "art"), "--no-progress"])
    assert code == 0
    ray_metrics, local_metrics = _metrics(tmp_path / "out"), _metrics(tmp / "out")
    assert len(ray_metrics) == 2 and ray_metrics == local_metrics
    rows = [json.loads(line) for line in (tmp_path / "out" / "trials.jsonl").read_text().splitlines()]
    assert {r["executor"] for r in rows if r["status"] == "ok"} == {"ray"}


def test_clear_errors_for_bad_configs_and_options(tmp_path, capsys):
    config = _config(tmp_path, [{"id": "x", "arch": "lenet5"}])
    assert benchmarks_main(["run", str(config)]) == 2
    assert "missing dataset" in capsys.readouterr().err
    config = _config(tmp_path, [TARGET])
    with pytest.raises(SystemExit):
        benchmarks_main(["run", str(config), "--executor", "slurm"])
    assert "invalid choice: 'slurm'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmarks_main(["run", str(config), "--only", "nothing-like-it"])
    assert "no trial label contains it" in capsys.readouterr().err
