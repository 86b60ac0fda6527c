"""Server-rendered HTML pages: an index of experiments and one page per experiment.

No frontend build: plain HTML with a little CSS. A page whose experiment is still queued or running
polls ``/v1/experiments/{id}`` every two seconds (a few lines of ``fetch``), updates its progress
bar, and reloads itself when the status or the results change; without JavaScript a
``<noscript>`` meta refresh does the same.
"""

from __future__ import annotations

import json
from html import escape

from . import attribute_pages, classifier_inversion_pages, membership_pages
from . import tables as t
from .kinds import kind_of

# The page sections of each kind other than inversion (whose sections are below): a module with
# ``summary(spec) -> str`` (the line under the title) and ``sections(results) -> str``.
KIND_PAGES = {"membership": membership_pages, "attribute": attribute_pages,
              "classifier-inversion": classifier_inversion_pages}

ACTIVE = ("queued", "running", "interrupted")

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem auto;max-width:72rem;
     padding:0 1rem;color:#1d2430;background:#fff}
h1{font-size:1.5rem;margin:.2rem 0 1rem} h2{font-size:1.15rem;margin-top:1.8rem}
table{border-collapse:collapse;width:100%;font-size:.92rem;margin:.5rem 0}
th,td{border-bottom:1px solid #dde2ea;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:.1rem .5rem;border-radius:.7rem;font-size:.85rem;color:#fff}
.queued,.interrupted{background:#7a869a}.running{background:#2f6fdb}.done{background:#2e8540}
.failed{background:#c62828}.cancelled{background:#8d6e63}
.bar{background:#e6e9ef;border-radius:.3rem;height:.8rem;width:20rem;display:inline-block;vertical-align:middle}
.bar.small{width:6rem}
.bar>span{display:block;height:100%;background:#2f6fdb;border-radius:.3rem}
.error{background:#fdecea;border:1px solid #f5c2c0;padding:.6rem;border-radius:.3rem;white-space:pre-wrap}
figure{display:inline-block;margin:.4rem 1rem .8rem 0} figcaption{font-size:.85rem;color:#4a5568}
img.grid{image-rendering:pixelated;border:1px solid #dde2ea;max-width:100%}
code,pre{font-size:.85rem} pre{background:#f6f8fa;padding:.6rem;border-radius:.3rem;overflow:auto}
a{color:#1f5fbf} .muted{color:#6b7585}
"""


def _page(title: str, body: str, poll: str | None = None) -> str:
    refresh = ""
    if poll:
        refresh = f'<noscript><meta http-equiv="refresh" content="3"></noscript>{poll}'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style>{refresh}</head><body>{body}</body></html>")


def _status(status: str) -> str:
    return f'<span class="status {escape(status)}" data-status="{escape(status)}">{escape(status)}</span>'


def _bar(fraction: float, small: bool = False) -> str:
    pct = max(0.0, min(100.0, 100.0 * float(fraction or 0.0)))
    if small:
        return f'<span class="bar small"><span style="width:{pct:.1f}%"></span></span>'
    return f'<span class="bar"><span id="bar" style="width:{pct:.1f}%"></span></span>'


def _subject(spec: dict) -> str:
    if spec.get("deployment_id"):
        return f"deployment {spec['deployment_id']}"
    model = spec.get("arch") or f"model {spec.get('model_id')}"
    return f"{model} on {spec.get('dataset') or '(model dataset)'}"


def _where(spec: dict) -> str:
    """The index's split point column: the split points, or the kind and its split point."""
    if spec.get("split_points"):
        return ", ".join(spec["split_points"])
    return " · ".join(v for v in (kind_of(spec), spec.get("split_point")) if v)


def _attacks(spec: dict) -> str:
    if spec.get("attacks"):
        return ", ".join(_attack_label(a) for a in spec["attacks"])
    if spec.get("observations"):  # attribute experiments
        return ", ".join(f"{o} → {a}" for o in spec["observations"] for a in spec.get("attributes", []))
    return str(spec.get("knowledge") or "")


def _count(spec: dict) -> int:
    """Images the experiment is about: private images, members, victims or people."""
    people = spec.get("people")
    if people is not None:
        return people if isinstance(people, int) else len(people)
    return int(spec.get("samples") or spec.get("victims") or 0)


def _attack_label(a) -> str:
    if isinstance(a, str):
        return a
    if a.get("label"):  # a membership attack's own label
        return a["label"]
    parts = [a.get("name", "?")] + [a[k] for k in ("aux", "shadow") if a.get(k)]
    return "-".join(parts + (["adaptive"] if a.get("adaptive") is True else []))


def index(items: list[dict], total: int, status: str | None) -> str:
    rows = []
    for r in items:
        spec = r["spec"]
        rows.append(t.row(
            t.markup(f'<a href="/experiments/{escape(r["id"])}">{escape(r["id"])}</a>'), t.markup(_status(r["status"])),
            t.text(_subject(spec)), t.text(_where(spec)), t.text(_attacks(spec)), t.number(_count(spec), "{:d}"),
            t.markup(f"{_bar(r['progress']['fraction'], True)} "
                     f"<span class=muted>{escape(r['progress']['step'])}</span>"),
            f"<td class=muted>{escape((r['created'] or '')[:19].replace('T', ' '))}</td>"))
    table = t.table(["id", "status", "model", "split points", "attacks", "images", "progress", "submitted"], rows,
                    empty="no experiments yet")
    shown = f"{len(items)} of {total}" + (f" with status {escape(status)}" if status else "")
    body = (f"<h1>splitlab experiments</h1><p class=muted>{shown} · newest first · "
            f'<a href="/v1/docs">API documentation</a> · <a href="/healthz">health</a></p>{table}'
            "<h2>Submit one</h2><pre>curl -X POST http://HOST:8000/v1/experiments \\\n"
            "  -H \"Authorization: Bearer $SPLITLAB_API_TOKEN\" -H 'Content-Type: application/json' \\\n"
            """  -d '{"arch": "lenet5", "dataset": "digits", "train": {"epochs": 2}, "split_points": ["conv1"],
       "attacks": ["whitebox"], "samples": 10}'</pre>""")
    poll = None
    if any(r["status"] in ACTIVE for r in items):
        poll = ('<script>setTimeout(function(){location.reload()}, 3000)</script>')
    return _page("splitlab experiments", body, poll)


def experiment(r: dict) -> str:
    exp_id, spec, res = r["id"], r["spec"], r.get("results") or {}
    kind = KIND_PAGES.get(kind_of(spec))
    attacks = escape(_attacks(spec))
    if kind is not None:
        what = (escape(_subject(spec)) + (f" · attacks {attacks}" if spec.get("attacks") else "")
                + f" · {escape(kind.summary(spec))}")
    else:
        what = (f"{escape(_subject(spec))} · split points {escape(', '.join(spec.get('split_points', [])))} · "
                f"attacks {attacks} · {int(spec.get('samples', 0))} private images · seed {int(spec.get('seed', 0))}"
                + (f" · feature defence {escape(json.dumps(spec['feature_defense']))}"
                   if spec.get("feature_defense") else ""))
    head = (f'<p><a href="/">&larr; all experiments</a></p><h1>Experiment <code>{escape(exp_id)}</code> '
            f"{_status(r['status'])}</h1><p>{what}</p>"
            f"<p>{_bar(r['progress']['fraction'])} <span id=fraction>{100 * r['progress']['fraction']:.0f}%</span> "
            f"<span id=step class=muted>{escape(r['progress']['step'])}</span>"
            + (f" · queue position {r['queue_position']}" if r.get("queue_position") else "")
            + (f" · restarted {r['restarts']}x" if r.get("restarts") else "")
            + "</p>")
    parts = [head]
    if r.get("error"):
        parts.append(f'<h2>Error</h2><div class="error">{escape(r["error"])}</div>')
    if kind is not None:
        parts.append(kind.sections(res))
    else:
        parts += [_model_section(res), _results_table(res), _splits_table(res), _images(exp_id, res)]
    parts.append(f"<h2>Spec</h2><pre>{escape(json.dumps(spec, indent=2))}</pre>"
                 f'<p class=muted>JSON: <a href="/v1/experiments/{escape(exp_id)}">/v1/experiments/'
                 f"{escape(exp_id)}</a> · submitted {escape(r['created'] or '')}"
                 f" · started {escape(r['started'] or '–')} · finished {escape(r['finished'] or '–')}</p>")
    poll = None
    if r["status"] in ACTIVE:
        key = json.dumps([r["status"], len(res.get("rows", []))])
        poll = ("<script>(function(){var key=%s;function tick(){fetch('/v1/experiments/%s').then(function(x)"
                "{return x.json()}).then(function(e){var k=JSON.stringify([e.status,((e.results||{}).rows||[]).length]);"
                "if(k!==key){location.reload();return}document.getElementById('bar').style.width="
                "(100*e.progress.fraction)+'%%';document.getElementById('fraction').textContent="
                "Math.round(100*e.progress.fraction)+'%%';document.getElementById('step').textContent="
                "e.progress.step;setTimeout(tick,2000)}).catch(function(){setTimeout(tick,4000)})}"
                "setTimeout(tick,2000)})()</script>") % (json.dumps(key), escape(exp_id))
    return _page(f"experiment {exp_id}", "".join(parts), poll)


def not_found(exp_id: str) -> str:
    return _page("no such experiment", f'<p><a href="/">&larr; all experiments</a></p><h1>No experiment '
                                       f"<code>{escape(exp_id)}</code></h1><p>It was never submitted here.</p>")


def _model_section(res: dict) -> str:
    m = res.get("model")
    if not m:
        return ""
    base = res.get("baseline") or {}
    text = f"<h2>Model</h2><p>{t.model_line(m)}</p>"
    if base:
        text += (f"<p class=muted>Blank baseline (an all-black image for every original): PSNR "
                 f"{t.pm(base, 'psnr')} dB, SSIM {t.pm(base, 'ssim', '{:.3f}')}</p>")
    return text


def _results_table(res: dict) -> str:
    body = [t.row(t.text(r["split"]), t.text(r["attack"]), t.mean_std(r, "psnr"),
                  t.mean_std(r, "ssim", "{:.3f}"), t.mean_std(r, "mse", "{:.4f}"),
                  t.number(r.get("accuracy"), "{:.3f}"), t.number(r.get("bytes_per_image"), "{:,.0f}"),
                  t.number(r.get("attack_seconds"), "{:.1f}")) for r in res.get("rows") or []]
    return t.results_section(
        ["split point", "attack", "PSNR (dB)", "SSIM", "MSE", "task accuracy", "bytes / image", "attack s"], body,
        "mean ± std over the private images; task accuracy is the edge → tap → cloud pipeline's top-1 on them; "
        "bytes / image are the features' bytes on the wire.")


def _splits_table(res: dict) -> str:
    splits = res.get("splits") or []
    if not splits:
        return ""
    body = [t.row(t.text(s["split"]), t.code(s.get("deployment_id")),
                  t.text("x".join(map(str, s.get("feature_shape") or []))),
                  t.number(s.get("accuracy"), "{:.3f}"), t.number(s.get("bytes_per_image"), "{:,.0f}"),
                  t.number(s.get("images_sent"), "{:d}")) for s in splits]
    return "<h2>Deployments</h2>" + t.table(["split point", "deployment", "features", "task accuracy", "bytes / image",
                                             "images sent"], body)


def _images(exp_id: str, res: dict) -> str:
    images = res.get("images") or {}
    if not images:
        return ""
    return ("<h2>Originals and reconstructions</h2><p class=muted>Each grid: the private images sent (top) and "
            f"the attack's reconstructions from the captured features (bottom).</p>{t.figures(images)}")
