"""The HTML sections of a classifier-inversion experiment's page: the target, the attack, the
summary against the mean-face baseline, the per-person table and the grid of faces.

:mod:`.pages` renders the page around them (status, progress, error, spec) as for every kind.
"""

from __future__ import annotations

from html import escape

from . import tables as t

# (column, key, format) of the summary table, for the attack and the baseline.
COLUMNS = (("SSIM own", "ssim_own", "{:.3f}"), ("SSIM others", "ssim_others", "{:.3f}"),
           ("PSNR own", "psnr_own", "{:.2f}"), ("PSNR others", "psnr_others", "{:.2f}"),
           ("identified by SSIM", "ssim_identified", "{:.3f}"), ("evaluator top-1", "eval_top1", "{:.3f}"),
           ("evaluator top-5", "eval_top5", "{:.3f}"), ("target top-1", "target_top1", "{:.3f}"))


def summary(spec: dict) -> str:
    people = spec.get("people")
    count = people if isinstance(people, int) else len(people or [])
    where = f"split point {spec['split_point']} · " if spec.get("split_point") else ""
    return (f"classifier inversion (MI-FACE) · {where}{spec.get('knowledge')} knowledge · {count} people · seed "
            f"{int(spec.get('seed', 0))}")


def sections(res: dict) -> str:
    return (t.present(res, "model", t.target_section) + t.present(res, "attack", _attack) + _summary(res)
            + t.present(res, "people", _people) + t.present(res, "images", _faces))


def _attack(a: dict) -> str:
    queries = f" · {int(a['edge_queries'])} queries of the edge" if a.get("edge_queries") is not None else ""
    return (f"<p>Knowledge: {escape(str(a.get('knowledge')))} ({escape(str(a.get('origin')))}){queries} · attack "
            f"{t.num(a.get('attack_seconds'), '{:.1f}')} s</p>")


def _summary(res: dict) -> str:
    s, evaluator = res.get("summary"), res.get("evaluator")
    named = (("reconstructions", s), ("mean face of everyone (baseline)", res.get("baseline") or {})) if s else ()
    rows = [t.row(t.text(name), *(t.number(r.get(key), fmt) for _, key, fmt in COLUMNS)) for name, r in named]
    judge = (f"the evaluator <code>{escape(evaluator['model_id'])}</code> ({escape(evaluator['arch'])}, test accuracy "
             f"{t.num(evaluator.get('test_accuracy'), '{:.3f}')}) never saw the attack" if evaluator
             else "no evaluator named (evaluator_id)")
    return t.results_section(
        ["", *(c for c, _, _ in COLUMNS)], rows,
        "mean over the people. SSIM / PSNR to the person's mean training face (own) and to the other people's "
        f"(others); identified: the own mean face is the most similar of all; {judge}. Target top-1 is the attacked "
        "model's own verdict (what the attack optimised, not evidence).")


def _people(people: list) -> str:
    rows = [t.row(t.number(p["person"], "{:d}"), t.number(p["ssim_own"], "{:.3f}"),
                  t.number(p["ssim_others"], "{:.3f}"), t.number(p["psnr_own"], "{:.2f}"),
                  t.number(p["best_match"], "{:d}")) for p in people]
    return "<h2>People</h2>" + t.table(["person", "SSIM own", "SSIM others", "PSNR own", "best match (SSIM)"], rows,
                                       "people")


def _faces(images: dict) -> str:
    return f"<h2>Reconstructions</h2>{t.figures(images)}"
