"""report.md and report.html from a run record: content, escaping of user text, tolerance of partial records."""

from __future__ import annotations

import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from slimtune.errors import UserError
from slimtune.report.html import render_html
from slimtune.report.markdown import render_markdown
from slimtune.report.render import load_record, write_reports
from slimtune.report.svg import nice_ticks

SAMPLE = Path(__file__).parent / "fixtures" / "run_sample.json"
CHARTS = ("chart-loss", "chart-confusion", "chart-tradeoff")
EVIL = "<script>alert(1)</script>"
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source", "track", "embed"}


@pytest.fixture
def record() -> dict:
    return json.loads(SAMPLE.read_text())


class Page(HTMLParser):
    """Parses a page strictly enough to catch broken markup: every element closes, in order."""

    def __init__(self, text: str):
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.open_ids: list[str] = []
        self.ids: dict[str, str] = {}  # id -> tag
        self.inside: dict[str, set[str]] = {}  # id -> tags found inside that element
        self.rows: dict[str, int] = {}  # table id -> body rows
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed elements: {self.stack}"

    def _seen(self, tag: str, attrs) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        for ident in self.open_ids:
            self.inside[ident].add(tag)
            if tag == "tr" and any(t == "tbody" for t, _ in self.stack):
                self.rows[ident] = self.rows.get(ident, 0) + 1

    def handle_starttag(self, tag, attrs):
        self._seen(tag, attrs)
        if tag in VOID:
            return
        ident = dict(attrs).get("id")
        if ident:
            assert ident not in self.ids, f"duplicate id {ident}"
            self.ids[ident], self.inside[ident] = tag, set()
            self.open_ids.append(ident)
        self.stack.append((tag, ident))

    def handle_startendtag(self, tag, attrs):
        self._seen(tag, attrs)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack, f"</{tag}> closes nothing"
        open_tag, ident = self.stack.pop()
        assert open_tag == tag, f"</{tag}> closes <{open_tag}>"
        if ident:
            self.open_ids.remove(ident)


def test_markdown_tables(record):
    md = render_markdown(record)
    assert (
        "| builder (int4 ONNX) | onnx | 90.7% | -1.0 pt | 94.8% | 0 / 97 | 1.19 | 26.9 ms | 31.8 ms | 212.6 | "
        "82.2 MiB | 221.0 MiB |" in md
    )
    assert "| input model | hf | 0.0% | – | 68.0% | 97 / 97 | 12.31 | 94.8 ms |" in md
    assert "| lora (adapter) | adapter | 91.8% | +91.8 pt |" in md
    assert (
        "| accuracy-accuracy_score | max-degradation 0.02 vs merge | 0.9175 | 0.9072 | met | 0.0097 |" in md
    )
    assert "| builder | ModelBuilder | hit | 48.3 s (cached) | 1.52 GiB | 82.2 MiB |" in md
    assert "| lora | LoRA | run | 3 min 33 s | 2.00 GiB | 18.7 MiB |" in md
    assert "| lora | 98 | 385 | 97 | 0.4127 | 0.1262 | 1.135 | 123.0 | 4,884,480 (3.50%) |" in md
    assert "## Confusion matrix: builder (int4 ONNX)" in md
    assert "| true label | fear | joy | sadness | surprise | invalid |" in md
    assert "| joy | 0 | 23 | 1 | 1 | 0 |" in md
    assert (
        "| 1 | yes | yes | lora.r=16, lora.training_args.learning_rate=0.0003 | ok | 90.7% | 26.9 ms | 82.2 MiB |"
        in md
    )
    assert "- engine.host -> host (top-level since the current schema)" in md
    assert "| torch | 2.13.0+cpu |" in md
    assert "- **wall time**: 7 min 11 s" in md
    assert "- **machine**: Linux-6.1.0-28-amd64-x86_64-with-glibc2.36, Python 3.11.7, 2 CPUs" in md


def test_html_structure_and_ids(record):
    page = Page(render_html(record))
    assert page.ids["stage-table"] == "table"
    assert page.rows["stage-table"] == 4
    for chart in CHARTS:
        assert "svg" in page.inside[chart], f"{chart} holds no SVG"
    assert {"polyline", "circle"} <= page.inside["chart-loss"]
    assert "rect" in page.inside["chart-confusion"]
    assert "circle" in page.inside["chart-tradeoff"]
    assert page.rows["candidate-table"] == 4


def test_html_is_self_contained(record):
    text = render_html(record)
    page = Page(text)
    assert not {"script", "link", "img", "iframe", "object"} & set(page.tags)
    assert all(name not in ("src", "href") for name, _ in page.attrs)
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    assert "Content-Security-Policy" in text


def test_numbers_in_html(record):
    text = render_html(record)
    for cell in ("90.7%", "-1.0 pt", "26.9 ms", "82.2 MiB", "MISSED" if not record["goals_met"] else "met"):
        assert cell in text
    assert ">23</text>" in text  # a confusion count drawn in the heat map


def _poison(record: dict) -> dict:
    record = copy.deepcopy(record)
    record["config_as_given"]["passes"]["lora"]["note"] = EVIL
    record["config_file"] = f"/tmp/{EVIL}.yaml"
    record["key_mappings"].append(f"a.b -> c ({EVIL})")
    stage = record["evaluation"]["stages"][-1]
    stage["label"] = f"int4 {EVIL} | x"
    stage["metrics"]["confusion"]["labels"][0] = EVIL
    record["passes"][0]["name"] = EVIL
    record["candidates"][0]["params"] = {"note": EVIL}
    record["goals"][0]["metric"] = EVIL
    return record


def test_user_text_is_escaped(record):
    record = _poison(record)
    text = render_html(record)
    assert EVIL not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "script" not in Page(text).tags

    md = render_markdown(record)
    assert EVIL not in md
    stage_row = next(line for line in md.splitlines() if line.startswith("| int4 "))
    # the `|` in the label is escaped, so the row keeps its 12 cells
    assert stage_row.replace("\\|", "").count("|") == 13


def _without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def _variants(sample: dict) -> dict[str, dict]:
    single = copy.deepcopy(sample)
    single["evaluation"]["stages"] = single["evaluation"]["stages"][:1]
    single["passes"] = []
    no_training = copy.deepcopy(sample)
    no_training["passes"] = no_training["passes"][1:]
    mangled = copy.deepcopy(sample)
    mangled["passes"] = [None, 3, {"metrics": {"loss_curve": [{"step": "x"}, None]}}]
    mangled["evaluation"] = {
        "stages": [None, {"metrics": {"latency": "fast", "confusion": {"labels": ["a"]}}}]
    }
    mangled["evaluation"]["stages"].append(
        {"stage": "nan", "metrics": {"accuracy": float("nan"), "latency": {"e2e_ms": {"p50": float("inf")}}}}
    )
    mangled["passes"].append(
        {"metrics": {"loss_curve": [{"step": 1, "loss": float("nan")}, {"step": 2, "loss": 1.0}]}}
    )
    mangled["goals"] = [{"met": False}, "?"]
    mangled["candidates"] = [{"id": 1, "metrics": None}]
    mangled["machine"] = "laptop"
    return {
        "empty": {},
        "no-evaluation": _without(sample, "evaluation", "goals", "goals_met", "candidates"),
        "no-training": no_training,
        "single-stage": single,
        "failed": {
            **_without(sample, "evaluation", "goals", "goals_met", "final_model"),
            "status": "failed",
            "error": "builder: out of memory",
        },
        "mangled": mangled,
    }


@pytest.mark.parametrize(
    "variant", ["empty", "no-evaluation", "no-training", "single-stage", "failed", "mangled"]
)
def test_partial_records_render(record, variant):
    partial = _variants(record)[variant]
    md, text = render_markdown(partial), render_html(partial)
    page = Page(text)
    assert md.startswith("# slimtune run report")
    assert 'nan"' not in text and 'inf"' not in text  # no coordinate a browser would reject
    if variant in ("empty", "no-evaluation", "failed", "mangled"):
        assert "stage-table" not in page.ids or variant == "mangled"
        assert "chart-confusion" not in page.ids
    if variant in ("no-training", "single-stage", "empty"):
        assert "chart-loss" not in page.ids
        assert "No training pass logged a loss curve" in text
    if variant == "single-stage":
        assert page.rows["stage-table"] == 1
        assert "chart-tradeoff" in page.ids
    if variant == "failed":
        assert "Run status: failed" in text and "builder: out of memory" in text
        assert "Run status: failed" in md


def test_missed_goal_is_shown(record):
    record["goals"][0].update(met=False, margin=-0.0103)
    record.update(goals_met=False, status="goals_not_met")  # what the engine writes when a goal fails
    md, text = render_markdown(record), render_html(record)
    assert "Run status" not in md and "Run status" not in text
    assert "> **Finished, but some goals were MISSED** (see Goals)." in md
    assert "| MISSED by 0.0103 | -0.0103 |" in md
    assert "Some goals were MISSED." in md
    assert "some goals were MISSED" in text and 'class="num missed"' not in text and 'class="missed"' in text


def test_write_reports_atomically(tmp_path, record):
    (tmp_path / "run.json").write_text(json.dumps(record))
    md_path, html_path = write_reports(tmp_path)
    assert (md_path.name, html_path.name) == ("report.md", "report.html")
    assert md_path.read_text() == render_markdown(record)
    assert html_path.read_text() == render_html(record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md", "run.json"]


def test_load_record_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="run.json: not found"):
        load_record(tmp_path)
    (tmp_path / "run.json").write_text('{"status": "ok",\n')
    with pytest.raises(UserError, match=r"run.json:2: not valid JSON"):
        load_record(tmp_path)
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        load_record(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        load_record(tmp_path / "missing")


@pytest.mark.parametrize(("low", "high"), [(0, 1), (0, 97.3), (26.4, 137.1), (0.12, 3.4), (5, 5), (0, 1e-4)])
def test_nice_ticks_cover_the_range(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high
    assert 2 <= len(ticks) <= 12


def test_engine_record_with_paths_renders_as_its_json(tmp_path, record):
    """The engine hands over its in-memory record (Path objects and all); the reports match run.json's."""
    live = copy.deepcopy(record)
    live["final_model"]["path"] = tmp_path / "model"
    live["key_mappings"] = tuple(live["key_mappings"])
    md_path, _ = write_reports(tmp_path, live)
    assert f"- **final model**: {tmp_path / 'model'} (onnx, 82.2 MiB)" in md_path.read_text()
    assert "- engine.host -> host" in md_path.read_text()
