"""`Result` displays itself in a notebook; the attack summary and the refusal evaluation are Results."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import pytest

import interp.core.result
from analyses.refusal import RefusalEvaluation
from interp.attacks.run import Summary
from interp.core.result import Result
from interp.errors import InterpError

PLOTLYJS = "plotly.js v"  # the banner of the embedded library


class Tiny(Result):
    title = "Tiny <result>"

    def summary(self) -> dict:
        return {"accuracy": 0.123456, "nested": {"layer": 7}, "long": list(range(20))}

    def figures(self) -> dict[str, go.Figure]:
        return {"curve": go.Figure(go.Scatter(y=[3, 1, 2])), "bars": go.Figure(go.Bar(y=[5, 6]))}


@pytest.fixture
def fresh_page(monkeypatch):
    """A process that has not shown a Result yet (plotly.js not yet embedded)."""
    monkeypatch.setattr(interp.core.result, "_plotlyjs_sent", False)


def test_repr_html_has_the_summary_table_and_every_figure(fresh_page):
    page = Tiny()._repr_html_()
    assert "<h3>Tiny &lt;result&gt;</h3>" in page  # escaped
    assert "<th style='text-align:left'>accuracy</th><td style='text-align:left'>0.1235</td>" in page
    assert "nested.layer" in page and "[20 items]" in page
    assert page.count("Plotly.newPlot") == 2 and "<h4>curve</h4>" in page and "<h4>bars</h4>" in page
    assert page.count(PLOTLYJS) == 1  # offline: the library itself is in the output, once


def test_plotlyjs_is_embedded_once_per_process(fresh_page):
    first, second = Tiny()._repr_html_(), Tiny()._repr_html_()
    assert PLOTLYJS in first and PLOTLYJS not in second
    assert second.count("Plotly.newPlot") == 2
    assert len(second) < len(first) / 10


def test_saved_report_always_embeds_plotlyjs(tmp_path):
    Tiny()._repr_html_()
    out = Tiny().save(tmp_path / "r")
    page = (out / "report.html").read_text()
    assert page.count(PLOTLYJS) == 1 and page.count("Plotly.newPlot") == 2
    assert json.loads((out / "result.json").read_text())["nested"] == {"layer": 7}
    with pytest.raises(InterpError, match="no figure named 'x'; figures: curve, bars"):
        Tiny().figure("x")


def test_attack_summary_is_a_result(fresh_page, tmp_path):
    log = tmp_path / "run.jsonl"
    rows = [{"behavior": "a", "id": "a", "success": True, "seconds": 10.0, "final": True, "loss": 0.1, "step": 3,
             "adversarial_prompt": "a !", "response": "ok", "method": "gcg", "model": "m", "curve": [0.9, 0.5, 0.1]},
            {"behavior": "b", "id": "b", "success": False, "seconds": 30.0, "final": True, "loss": 0.9, "step": 7,
             "adversarial_prompt": "b !", "response": "I'm sorry", "method": "gcg", "model": "m", "curve": [1.0, 0.9]}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = Summary.from_log(log)
    assert isinstance(s, Result) and s.title == "gcg on m"
    summary = json.loads(s.to_json())
    assert summary["success_rate"] == 0.5 and [b["id"] for b in summary["behaviors"]] == ["a", "b"]
    figs = s.figures()
    assert [list(t.y) for t in figs["loss curves"].data] == [[0.9, 0.5, 0.1], [1.0, 0.9]]
    assert {t.name: list(t.y) for t in figs["seconds"].data} == {"jailbroken": [10.0], "not jailbroken": [30.0]}
    page = s._repr_html_()
    assert "success_rate" in page and "<td style='text-align:left'>0.5</td>" in page and PLOTLYJS in page
    assert (s.save(tmp_path / "summary") / "report.html").is_file()


def test_refusal_evaluation_is_a_result_and_a_mapping(fresh_page):
    rates = {"harmful_baseline": 0.75, "harmful_ablated": 0.25, "harmless_baseline": 0.0, "harmless_added": 0.5}
    gens = {"harmful": ["h"], "harmless": ["s"], "harmful_baseline": ["I'm sorry"], "harmful_ablated": ["Sure"],
            "harmless_baseline": ["Bread"], "harmless_added": ["I can't"]}
    ev = RefusalEvaluation(rates, 0.04, 2.0, 16, gens)
    assert ev["refusal_rate"] == rates and ev["generations"] is gens  # the keys callers used on the old dict
    assert dict(ev) == {"refusal_rate": rates, "kl_harmless_ablation": 0.04, "addition_alpha": 2.0,
                        "max_new_tokens": 16, "generations": gens}
    assert json.loads(json.dumps(dict(ev))) == json.loads(ev.to_json())
    with pytest.raises(KeyError):
        ev["title"]
    bars = ev.figure("refusal_rate").data
    assert [list(b.y) for b in bars] == [[0.75, 0.0], [0.25, 0.5]]
    page = ev._repr_html_()
    assert "refusal_rate.harmful_ablated" in page and "0.25" in page and PLOTLYJS in page
