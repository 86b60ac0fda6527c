"""The HTML sections of a membership experiment's page: its targets, the metrics table, the ROC plot.

:mod:`.pages` renders the page around them (status, progress, error, spec) as for every kind.
"""

from __future__ import annotations

from . import tables as t

# (column, metric key, format) of the results table: mean ± std over the seeds.
COLUMNS = (("AUC", "auc", "{:.3f}"), ("TPR @ 1% FPR", "tpr_at_1pct_fpr", "{:.3f}"),
           ("TPR @ 0.1% FPR", "tpr_at_0_1pct_fpr", "{:.3f}"), ("balanced acc", "balanced_accuracy", "{:.3f}"),
           ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("F1", "f1", "{:.3f}"),
           ("advantage", "advantage", "{:.3f}"))


def summary(spec: dict) -> str:
    """The line under the title: how the target is queried, the seeds, the samples."""
    queries = (f"queries through the live pipeline (split point {spec.get('split_point') or 'first'})"
               if spec.get("through_pipeline") else "queries in process")
    seeds = ", ".join(str(s) for s in spec.get("seeds", []))
    return (f"membership inference · {queries} · {int(spec.get('samples', 0))} members and as many non-members "
            f"per seed · seeds {seeds}")


def sections(res: dict) -> str:
    """Targets, results and ROC sections."""
    return _targets(res) + _results(res) + _roc(res)


def _targets(res: dict) -> str:
    targets = res.get("targets") or []
    if not targets:
        return ""
    rows = [t.row(t.number(x["seed"], "{:d}"), t.code(x.get("model_id")),
                  t.text("reused" if x.get("reused") else "trained"),
                  t.number(x.get("train_accuracy"), "{:.3f}"), t.number(x.get("test_accuracy"), "{:.3f}"),
                  t.number(x.get("members"), "{:d}"), t.text(x.get("deployment_id") or x.get("queries")))
            for x in targets]
    return ("<h2>Targets</h2>" + t.table(["seed", "model", "", "train acc", "test acc", "members", "queried"], rows,
                                         "targets")
            + "<p class=muted>the train-test accuracy gap is the overfitting membership attacks feed on.</p>")


def _results(res: dict) -> str:
    body = [t.row(t.text(r["attack"]), t.number(len(r.get("seeds", [])), "{:d}"),
                  *(t.mean_std(r, key, fmt) for _, key, fmt in COLUMNS),
                  t.text(r.get("threshold_source", ""))) for r in res.get("rows") or []]
    return t.results_section(
        ["attack", "seeds", *(c for c, _, _ in COLUMNS), "threshold"], body,
        "mean ± std over the seeds. TPR at a low FPR is the highest TPR the ROC reaches at or below it; balanced "
        "accuracy, precision, recall, F1 and advantage (TPR − FPR) are at the threshold the attack chose on its own "
        "shadow data (<em>given</em>), or, for an attack that chooses none, at the best threshold on the evaluated "
        "scores (<em>max-advantage</em>: an upper bound).")


def _roc(res: dict) -> str:
    roc = (res.get("images") or {}).get("roc")
    if not roc:
        return ""
    return f"<h2>ROC</h2>{t.figures({'ROC curves': roc})}"
