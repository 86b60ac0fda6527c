"""The HTML sections of a membership experiment's page: its targets, the metrics table, the ROC plot.

:mod:`.pages` renders the page around them (status, progress, error, spec) as for every kind.
"""

from __future__ import annotations

from html import escape

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


def sections(res: dict, num, pm) -> str:
    """Targets, results and ROC sections; ``num`` and ``pm`` format a number and a mean ± std."""
    return _targets(res, num) + _results(res, pm) + _roc(res)


def _targets(res: dict, num) -> str:
    targets = res.get("targets") or []
    if not targets:
        return ""
    body = "".join(
        f"<tr><td class=num>{int(t['seed'])}</td><td><code>{escape(str(t.get('model_id')))}</code></td>"
        f"<td>{'reused' if t.get('reused') else 'trained'}</td>"
        f"<td class=num>{num(t.get('train_accuracy'), '{:.3f}')}</td>"
        f"<td class=num>{num(t.get('test_accuracy'), '{:.3f}')}</td>"
        f"<td class=num>{num(t.get('members'), '{:d}')}</td>"
        f"<td>{escape(str(t.get('deployment_id') or t.get('queries')))}</td></tr>" for t in targets)
    return ("<h2>Targets</h2><table id=targets><thead><tr><th>seed</th><th>model</th><th></th><th>train acc</th>"
            "<th>test acc</th><th>members</th><th>queried</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
            "<p class=muted>the train-test accuracy gap is the overfitting membership attacks feed on.</p>")


def _results(res: dict, pm) -> str:
    rows = res.get("rows") or []
    if not rows:
        return "<h2>Results</h2><p class=muted>no results yet</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c, _, _ in COLUMNS)
    body = "".join(
        f"<tr><td>{escape(row['attack'])}</td><td class=num>{len(row.get('seeds', []))}</td>"
        + "".join(f"<td class=num>{pm(row, key, fmt)}</td>" for _, key, fmt in COLUMNS)
        + f"<td>{escape(str(row.get('threshold_source', '')))}</td></tr>" for row in rows)
    return (f"<h2>Results</h2><table id=results><thead><tr><th>attack</th><th>seeds</th>{head}<th>threshold</th>"
            f"</tr></thead><tbody>{body}</tbody></table>"
            "<p class=muted>mean ± std over the seeds. TPR at a low FPR is the highest TPR the ROC reaches at or "
            "below it; balanced accuracy, precision, recall, F1 and advantage (TPR − FPR) are at the threshold "
            "the attack chose on its own shadow data (<em>given</em>), or, for an attack that chooses none, at "
            "the best threshold on the evaluated scores (<em>max-advantage</em>: an upper bound).</p>")


def _roc(res: dict) -> str:
    roc = (res.get("images") or {}).get("roc")
    if not roc:
        return ""
    return (f'<h2>ROC</h2><figure><img class=grid src="{escape(roc["url"])}" alt="ROC curves">'
            f"<figcaption>{escape(roc.get('caption', ''))}</figcaption></figure>")
