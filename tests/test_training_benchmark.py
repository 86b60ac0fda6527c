"""The training benchmark: trains the configured targets into the store and reports them."""

from __future__ import annotations

import yaml

from benchmarks import training


def test_report_table_curve_plot_and_kept_notes(tmp_path):
    config = tmp_path / "training.yaml"
    config.write_text(yaml.safe_dump({"suite": "training", "targets": [{
        "id": "lenet5-digits-bench", "arch": "lenet5", "dataset": "digits", "target_test_accuracy": 0.5,
        "options": {"epochs": 3, "lr": 0.005, "batch_size": 64, "scheme": "full", "eval_each_epoch": True}}]}))
    out = tmp_path / "results" / "training.md"
    out.parent.mkdir()
    args = ["--config", str(config), "--artifacts", str(tmp_path / "artifacts"), "--threads", "1", "--out", str(out)]
    assert training.main(args) == 0
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| lenet5-digits-bench |"))
    test_acc = float(row.split("|")[10])
    assert test_acc > 0.5 and row.rstrip().endswith("| yes |")
    assert "- lenet5-digits-bench: epoch 1 " in text and f"epoch 3 {test_acc:.4f}" in text
    assert (out.parent / "training-curves.png").stat().st_size > 1000
    out.write_text(text + "\n<!-- notes -->\nhand-written notes\n")
    assert training.main(args) == 0  # reuses the stored target, keeps the notes
    again = out.read_text()
    assert row in again and again.endswith("<!-- notes -->\nhand-written notes\n")
