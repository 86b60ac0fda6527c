"""The HTML sections of an attribute experiment's page: the target, the victims, the results table.

:mod:`.pages` renders the page around them (status, progress, error, spec) as for every kind.
"""

from __future__ import annotations

from . import tables as t


def summary(spec: dict) -> str:
    """The line under the title: the split point, what is observed, the attributes, the budget."""
    where = f"split point {spec['split_point']} · " if spec.get("split_point") else ""
    return (f"attribute inference · {where}observes {', '.join(spec.get('observations', []))} · infers "
            f"{', '.join(spec.get('attributes', []))} · {int(spec.get('victims', 0))} victims · seed "
            f"{int(spec.get('seed', 0))}")


def sections(res: dict) -> str:
    return t.present(res, "model", t.target_section) + t.present(res, "victims", _victims) + _results(res)


def _victims(v: dict) -> str:
    return (f"<p>{int(v['images'])} victims' images sent through the edge → tap → cloud; the pipeline's task "
            f"accuracy on them {t.num(v.get('task_accuracy'), '{:.3f}')}; {t.num(v.get('bytes_per_image'), '{:,.0f}')} "
            "feature bytes per image on the wire.</p>")


def _results(res: dict) -> str:
    body = [t.row(t.text(r["observation"]), t.text(r["attribute"]), t.number(r.get("accuracy"), "{:.3f}"),
                  t.number(r.get("baseline_accuracy"), "{:.3f}"), t.number(r.get("macro_f1"), "{:.3f}"),
                  t.number(r.get("baseline_macro_f1"), "{:.3f}"),
                  t.text(" · ".join(f"{c} {v:.2f}" for c, v in (r.get("f1") or {}).items())),
                  t.number(r.get("aux_images"), "{:d}"), t.number(r.get("edge_queries"), "{:d}"),
                  t.number(r.get("fit_seconds"), "{:.1f}")) for r in res.get("rows") or []]
    return t.results_section(
        ["observation", "attribute", "accuracy", "majority baseline", "macro-F1", "baseline macro-F1", "per-class F1",
         "attacker images", "edge queries", "fit s"], body,
        "features: the split features the tap captured for each victim's request; outputs: the probabilities the "
        "edge released. The baseline predicts the attacker's own majority class for everyone. Edge queries: the "
        "attacker's own images sent to learn the attack (an image observed once is remembered).")
