"""HTML pieces for the lab's pages: numbers as text, cells, rows and tables, and the parts every
kind's page has (the results section, the model line, the deployed target), in one place.

Every kind's page (:mod:`.pages`, :mod:`.membership_pages`, :mod:`.attribute_pages`,
:mod:`.classifier_inversion_pages`) builds its tables from these, so the markup (escaping, the
right-aligned number cells, the empty-table line, "no results yet") is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape


def num(value, fmt: str = "{:.2f}") -> str:
    """``value`` formatted, ``–`` for None; a value the format refuses is shown as text."""
    if value is None:
        return "–"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return escape(str(value))


def pm(row: dict, key: str, fmt: str = "{:.2f}") -> str:
    """``row``'s ``key_mean ± key_std``."""
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None:
        return "–"
    return f"{num(mean, fmt)} ± {num(std, fmt)}"


def text(value) -> str:
    """A cell of text (escaped)."""
    return f"<td>{escape(str(value))}</td>"


def code(value) -> str:
    """A cell of an identifier (escaped, in ``<code>``)."""
    return f"<td><code>{escape(str(value))}</code></td>"


def number(value, fmt: str = "{:.2f}") -> str:
    """A right-aligned cell of a number (see :func:`num`)."""
    return f"<td class=num>{num(value, fmt)}</td>"


def mean_std(row: dict, key: str, fmt: str = "{:.2f}") -> str:
    """A right-aligned cell of ``row``'s mean ± std of ``key`` (see :func:`pm`)."""
    return f"<td class=num>{pm(row, key, fmt)}</td>"


def markup(html: str) -> str:
    """A cell of markup that is already safe."""
    return f"<td>{html}</td>"


def row(*cells: str) -> str:
    return f"<tr>{''.join(cells)}</tr>"


def table(headers, rows: list[str], table_id: str | None = None, empty: str | None = None) -> str:
    """A table with a header row of (escaped) ``headers``; ``empty``: the line shown without rows."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(rows)
    if not rows and empty:
        body = f'<tr><td colspan="{len(headers)}" class="muted">{escape(empty)}</td></tr>'
    ident = f" id={table_id}" if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figures(images: dict) -> str:
    """``<figure>`` per image of ``results["images"]`` (name -> {url, caption})."""
    return "".join(
        f'<figure><img class=grid src="{escape(i["url"])}" alt="{escape(name)}"><figcaption>'
        f"{escape(i.get('caption', name))}</figcaption></figure>" for name, i in images.items())


def present(res: dict, key: str, render: Callable[[object], str]) -> str:
    """``render(res[key])``; nothing while the results hold no ``key`` yet (or an empty one)."""
    value = res.get(key)
    return render(value) if value else ""


def results_section(headers, rows: list[str], note: str, table_id: str = "results") -> str:
    """The Results heading with its table and the note under it (``note``: safe markup), or a line
    saying there are none yet."""
    if not rows:
        return "<h2>Results</h2><p class=muted>no results yet</p>"
    return f"<h2>Results</h2>{table(headers, rows, table_id)}<p class=muted>{note}</p>"


def model_line(m: dict) -> str:
    """The results' model: its id, architecture on dataset, trained or reused, accuracies."""
    return (f"<code>{escape(str(m.get('model_id')))}</code> ({escape(str(m.get('arch')))} on "
            f"{escape(str(m.get('dataset')))}, {'reused' if m.get('reused') else 'trained for this experiment'}) · "
            f"train accuracy {num(m.get('train_accuracy'), '{:.3f}')} · test accuracy "
            f"{num(m.get('test_accuracy'), '{:.3f}')}")


def target_section(m: dict) -> str:
    """The target of an attribute or classifier-inversion experiment: the model and its deployment."""
    return (f"<h2>Target</h2><p>{model_line(m)} · deployed at {escape(str(m.get('split_point')))} as "
            f"<code>{escape(str(m.get('deployment_id')))}</code> (features "
            f"{escape('x'.join(map(str, m.get('feature_shape') or [])))})</p>")
