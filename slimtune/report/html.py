"""report.html: one self-contained page (inline CSS and SVG, no scripts, no external files).

A Content-Security-Policy forbids every external load, so a browser that opens the file reports any
accidental reference to a network resource as an error instead of fetching it.
"""

from __future__ import annotations

from html import escape
from typing import Any

from slimtune.report import svg, view

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827; background: #f9fafb;
       margin: 0; line-height: 1.45; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.note, figcaption { color: #4b5563; font-size: 13px; }
.banner { padding: 10px 14px; border-radius: 6px; margin: 14px 0; font-weight: 600; }
.banner.ok { background: #ecfdf5; color: #065f46; border: 1px solid #a7f3d0; }
.banner.bad { background: #fef2f2; color: #991b1b; border: 1px solid #fecaca; }
table { border-collapse: collapse; font-size: 13.5px; background: #fff; margin: 6px 0; }
th, td { border: 1px solid #e5e7eb; padding: 5px 9px; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; white-space: nowrap; }
#stage-table td:first-child, #pass-table td:first-child { white-space: nowrap; }
#stage-table th { white-space: normal; }
#stage-table th, #stage-table td { padding: 5px 7px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafafa; }
td.met { color: #047857; font-weight: 600; } td.missed { color: #b91c1c; font-weight: 600; }
table.summary th { text-align: left; width: 150px; }
.scroll { overflow-x: auto; }
figure { margin: 12px 0 20px; background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; padding: 10px;
         display: inline-block; max-width: 100%; box-sizing: border-box; }
figure svg { max-width: 100%; height: auto; display: block; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
code { font-size: 12.5px; background: #f3f4f6; padding: 1px 4px; border-radius: 3px; word-break: break-all; }
details { margin: 8px 0; } summary { cursor: pointer; color: #1d4ed8; }
pre { background: #fff; border: 1px solid #e5e7eb; padding: 10px; overflow-x: auto; font-size: 12px; }
"""


def esc(text: object) -> str:
    return escape(str(text), quote=True)


def html_table(table: view.Table, table_id: str | None = None, cell_class=None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
    rows = []
    for row in table.rows:
        cells = []
        for i, cell in enumerate(row):
            classes = ["num"] if i in table.align_right else []
            if cell_class:
                classes += cell_class(i, cell)
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{esc(cell)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _verdict_class(i: int, cell: str) -> list[str]:
    if i != 4:
        return []
    return ["met"] if cell == "met" else ["missed"]


def candidate_points(record: dict[str, Any]) -> list[dict[str, Any]]:
    points = []
    for c in view.as_list(record.get("candidates")):
        metrics = view.as_dict(view.dig(c, "metrics"))
        accuracy, p50 = view.candidate_value(metrics, "accuracy"), view.candidate_value(metrics, "p50")
        if accuracy is None or p50 is None:
            continue
        name = f"#{c.get('id', '?')}" + (" (chosen)" if c.get("chosen") else "")
        points.append(
            {
                "accuracy": accuracy,
                "p50": p50,
                "size": view.candidate_value(metrics, "size"),
                "pareto": bool(c.get("pareto")),
                "name": name,
                "title": f"candidate {name}: {view.fmt_params(c.get('params'))}",
            }
        )
    return points


def _charts(record: dict[str, Any], stages: list[view.Stage]) -> list[str]:
    out = ["<h2>Training</h2>"]
    trained = view.training_passes(record)
    loss_figures = []
    for p in trained:
        metrics = view.as_dict(p.get("metrics"))
        train, evaluation = (
            view.curve(metrics.get("loss_curve"), "loss"),
            view.curve(metrics.get("eval_curve"), "eval_loss"),
        )
        if train or evaluation:
            loss_figures.append(
                svg.loss_chart(f"Loss: {p.get('name') or '?'} ({p.get('type') or '?'})", train, evaluation)
            )
    if trained:
        out.append(html_table(view.training_table(record)))
    if loss_figures:
        out.append(
            '<figure id="chart-loss" class="chart">'
            + "".join(loss_figures)
            + "<figcaption>Training loss per logged step (solid) and eval loss on the held-out split "
            "(dashed).</figcaption></figure>"
        )
    else:
        out.append('<p class="note">No training pass logged a loss curve in this run.</p>')

    out.append('<h2>Quality and cost</h2><div class="charts">')
    confusion = view.final_confusion(stages)
    if confusion:
        out.append(
            f'<figure id="chart-confusion" class="chart">{svg.confusion_chart(confusion)}'
            "<figcaption>Counts of held-out rows; <em>invalid</em>: the answer named no label."
            "</figcaption></figure>"
        )
    candidates = candidate_points(record)
    if any(s.accuracy is not None and s.p50_ms is not None for s in stages) or candidates:
        out.append(
            f'<figure id="chart-tradeoff" class="chart">{svg.tradeoff_chart(stages, candidates)}'
            "<figcaption>Up and to the left is better; a point's area is proportional to the model's "
            "size on disk.</figcaption></figure>"
        )
    out.append("</div>")
    if not confusion and not stages:
        out.append('<p class="note">No evaluation in this run: no confusion matrix or trade-off chart.</p>')
    return out


def render_html(record: dict[str, Any]) -> str:
    stages = view.stages(record)
    status = str(record.get("status") or "unknown")
    parts = ["<h1>slimtune run report</h1>"]
    goals_met = record.get("goals_met")
    if not view.finished(record):
        detail = record.get("error") or "The run did not finish; the report shows what was recorded."
        parts.append(f'<div class="banner bad">Run status: {esc(status)}. {esc(detail)}</div>')
    elif goals_met is False:
        parts.append('<div class="banner bad">Finished, but some goals were MISSED.</div>')
    else:
        parts.append(
            f'<div class="banner ok">Finished{", all goals met" if goals_met else ". No goals were set"}.</div>'
        )

    diagnosis = view.diagnosis(record)
    if diagnosis:
        parts.append(
            '<h2 id="diagnosis">Why the fine-tune failed</h2>'
            f'<div class="banner bad">{esc(diagnosis.summary)}</div>'
            + (html_table(diagnosis.examples, "example-table") if diagnosis.examples.rows else "")
            + "<p>Likely causes:</p><ul>"
            + "".join(f"<li>{esc(c)}</li>" for c in diagnosis.causes)
            + "</ul><p>What learns such a task (merge into the config):</p>"
            f"<pre>{esc(diagnosis.fix)}</pre>"
        )

    summary = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in view.summary(record))
    parts.append(f'<h2>Summary</h2><table class="summary">{summary}</table>')

    parts.append("<h2>Stages</h2>")
    if stages:
        parts.append(html_table(view.stage_table(stages), "stage-table"))
        parts.append(
            '<p class="note">Δ accuracy: change from the previous evaluated stage, in percentage points. '
            "Latency: end to end per request.</p>"
        )
        notes = view.latency_notes(stages)
        if notes:
            parts.append('<ul class="note">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    else:
        parts.append('<p class="note">This run evaluated no stage.</p>')

    goals = view.goals_table(record)
    parts.append("<h2>Goals</h2>")
    parts.append(
        html_table(goals, "goal-table", _verdict_class)
        if goals.rows
        else '<p class="note">No goals were set.</p>'
    )

    parts += _charts(record, stages)

    candidates = view.candidates_table(record)
    if candidates.rows:
        note = view.search_summary(record)
        parts.append(
            "<h2>Candidates</h2>"
            + (f'<p class="note">{esc(note)}</p>' if note else "")
            + html_table(candidates, "candidate-table")
        )

    passes = view.passes_table(record)
    parts.append(
        "<h2>Passes</h2>"
        + (html_table(passes, "pass-table") if passes.rows else '<p class="note">No pass ran.</p>')
    )

    mappings = view.key_mappings(record)
    parts.append("<h2>Config keys mapped from the old schema</h2>")
    parts.append(
        "<ul>" + "".join(f"<li><code>{esc(m)}</code></li>" for m in mappings) + "</ul>"
        if mappings
        else '<p class="note">None: the config used the current schema.</p>'
    )
    versions = view.versions(record)
    if versions:
        parts.append(
            "<h2>Library versions</h2>"
            + html_table(view.Table(["library", "version"], [list(v) for v in versions]))
        )
    parts.append(_config_details(record))
    title = f"slimtune report: {status}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
        + "\n".join(parts)
        + "\n</main></body></html>\n"
    )


def _config_details(record: dict[str, Any]) -> str:
    import json

    blocks = []
    for key, label in (("config_as_given", "config as given"), ("config_migrated", "config after migration")):
        if record.get(key) is not None:
            text = json.dumps(record[key], indent=2, ensure_ascii=False, default=str)
            blocks.append(f"<details><summary>{esc(label)}</summary><pre>{esc(text)}</pre></details>")
    return ("<h2>Config</h2>" + "".join(blocks)) if blocks else ""
