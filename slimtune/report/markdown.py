"""report.md: the run record as Markdown tables, readable as plain text too."""

from __future__ import annotations

from typing import Any

from slimtune.report import view


def md_text(text: object) -> str:
    """A cell or line of user text: no table breaks, no raw HTML, one line."""
    # `<` is what starts raw HTML in Markdown; `|` ends a table cell
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("&", "&amp;").replace("<", "&lt;")
    return " ".join(out.splitlines())


def md_table(table: view.Table) -> list[str]:
    lines = [
        "| " + " | ".join(md_text(h) for h in table.headers) + " |",
        "|" + "|".join("---:" if i in table.align_right else "---" for i in range(len(table.headers))) + "|",
    ]
    lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in table.rows]
    return lines


def render_markdown(record: dict[str, Any]) -> str:
    stages = view.stages(record)
    out = ["# slimtune run report", ""]
    if not view.finished(record):
        out += [
            f"> **Run status: {md_text(record.get('status') or 'unknown')}.** "
            f"{md_text(record.get('error') or 'The run did not finish; the report shows what was recorded.')}",
            "",
        ]
    elif record.get("goals_met") is False:
        out += ["> **Finished, but some goals were MISSED** (see Goals).", ""]
    diagnosis = view.diagnosis(record)
    if diagnosis:
        out += ["## Why the fine-tune failed", "", md_text(diagnosis.summary), ""]
        if diagnosis.examples.rows:
            out += md_table(diagnosis.examples) + [""]
        out += ["Likely causes:", ""] + [f"- {md_text(c)}" for c in diagnosis.causes]
        out += ["", "What learns such a task (merge into the config):", "", "```", diagnosis.fix, "```", ""]
    out += ["## Summary", ""]
    out += [f"- **{k}**: {md_text(v)}" for k, v in view.summary(record)]
    out += ["", "## Stages", ""]
    if stages:
        out += md_table(view.stage_table(stages))
        out += [
            "",
            "Δ accuracy: change from the previous evaluated stage, in percentage points. "
            "Latency: end to end per request.",
        ]
        out += [""] + [f"- {md_text(note)}" for note in view.latency_notes(stages)]
    else:
        out.append(
            "This run evaluated no stage (no `evaluator` in the config, or evaluation was switched off)."
        )

    goals = view.goals_table(record)
    out += ["", "## Goals", ""]
    if goals.rows:
        met = record.get("goals_met")
        out.append("All goals met." if met else "Some goals were MISSED.")
        if any(isinstance(g, dict) and g.get("default") for g in record.get("goals") or []):
            out.append(
                "(No goal was set in the config: the default goal holds the final model to within 2 points of "
                "the best earlier stage.)"
            )
        out += [""] + md_table(goals)
        out += ["", "Margin: room left before the goal fails (negative: missed by that much)."]
    else:
        out.append("No goals were set.")

    passes = view.passes_table(record)
    out += ["", "## Passes", ""]
    out += md_table(passes) if passes.rows else ["No pass ran."]

    training = view.training_table(record)
    if training.rows:
        out += ["", "## Training", ""] + md_table(training)

    confusion = view.final_confusion(stages)
    if confusion:
        out += [
            "",
            f"## Confusion matrix: {md_text(confusion.stage)}",
            "",
            "Rows: true label; columns: predicted label.",
            "",
        ]
        table = view.Table(
            ["true label", *confusion.columns], align_right=set(range(1, len(confusion.columns) + 1))
        )
        table.rows = [
            [label, *map(str, row)] for label, row in zip(confusion.labels, confusion.matrix, strict=True)
        ]
        out += md_table(table)

    candidates = view.candidates_table(record)
    if candidates.rows:
        out += ["", "## Candidates", ""]
        if view.search_summary(record):
            out += [md_text(view.search_summary(record)), ""]
        out += md_table(candidates)

    mappings = view.key_mappings(record)
    out += ["", "## Config keys mapped from the old schema", ""]
    out += (
        [f"- {md_text(m)}" for m in mappings] if mappings else ["None: the config used the current schema."]
    )

    versions = view.versions(record)
    if versions:
        out += ["", "## Library versions", ""] + md_table(
            view.Table(["library", "version"], [list(v) for v in versions])
        )
    return "\n".join(out) + "\n"
