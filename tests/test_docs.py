"""The documentation: the results page is what benchmarks/results/*.json give (never typed by hand, never stale),
the other pages and the README state no measured figures, every page the site's navigation names exists, the
README is short and keeps its set-up commands, and the demo explains a relaxed filter in plain words.

`make docs` builds the site (not part of `make test`); these checks need none of its packages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from benchmarks import results_page
from tests.test_hygiene import ALLOWED, BUNDLED, MEASURED, NUMBER

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def test_results_page_is_generated_from_the_results_files_and_not_stale():
    committed = results_page.PAGE.read_text(encoding="utf-8")
    assert committed == results_page.render(), \
        "docs/results.md is stale against benchmarks/results/*.json: run `python -m benchmarks.results_page`"
    assert results_page.main(["--check"]) == 0


def test_every_results_file_has_a_section_with_its_provenance():
    page = results_page.render()
    for path in sorted(results_page.RESULTS.glob("*.json")):
        assert f"`benchmarks/results/{path.stem}.json`" in page, path.name
    for name, spec in results_page.SECTIONS.items():
        assert (results_page.RESULTS / f"{name}.json").is_file(), f"SECTIONS names {name}, which has no results file"
        assert not measured_figures(spec.about), f"{name}: a description must not state a figure: {spec.about!r}"
    assert page.count("Commit `") >= len(list(results_page.RESULTS.glob("*.json")))


def test_results_page_changes_when_a_results_file_changes(tmp_path):
    """Stale detection: a figure changed in a copy of the JSON files changes the page."""
    import json
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results_page.RESULTS, copy)
    before = results_page.render(copy)
    data = json.loads((copy / "tasks.json").read_text())
    data["models"]["smollm2-135m-instruct"]["rates"]["ioi"] = 0.123456
    (copy / "tasks.json").write_text(json.dumps(data))
    after = results_page.render(copy)
    assert after != before and "0.1235" in after and "0.1235" not in before


def test_results_page_formats():
    assert results_page.fmt(0.123456) == "0.1235" and results_page.fmt(True) == "yes" and results_page.fmt(None) == "–"
    assert results_page.fmt([1, 2, 3]) == "1, 2, 3" and results_page.fmt(list(range(20))) == "[20 values]"
    assert results_page.fmt("a|b [MASK]") == "a\\|b \\[MASK\\]"
    assert results_page.get({"a": [{"b": 1}]}, "a/0/b") == 1 and results_page.get({"a": 1}, "a/x") is None
    assert results_page.command("/x/.venv/bin/python -m benchmarks.tasks --out y") == "python -m benchmarks.tasks --out y"


def prose(markdown: str) -> str:
    """The prose of a Markdown page: fenced code blocks, inline code, HTML comments and link targets removed."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"<!-- papers table: generated.*?<!-- end of papers table -->", " ", text, flags=re.S)  # checked below
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def measured_figures(markdown: str) -> list[str]:
    """The sentences of a page's prose that state a measured or model-specific figure (tests/test_hygiene.py's
    rules, applied to Markdown)."""
    found = []
    text = " ".join(prose(markdown).split())
    for phrase in ALLOWED:
        text = text.replace(phrase, "")
    for sentence in re.split(r"(?<=[.;!?|])\s+", text):
        if any(p.search(sentence) for p in MEASURED) or (BUNDLED.search(sentence) and NUMBER.search(sentence)):
            found.append(sentence)
    return found


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if p != results_page.PAGE)


def test_docs_pages_and_readme_state_no_measured_figures():
    found = [f"{p.relative_to(ROOT)}: {s}" for p in [README, *pages()]
             for s in measured_figures(p.read_text(encoding="utf-8"))]
    assert not found, "measured figures belong on the generated results page:\n" + "\n".join(found)


@pytest.mark.parametrize("text", ["The shortlist run took 808 s.", "ITI raised MC2 by 3%.",
                                  "On Qwen2.5-Coder-0.5B layer 15 is chosen.", "Batched scoring is 4.9x faster."])
def test_the_docs_checker_flags_figures(text):
    assert measured_figures(text)


def test_the_docs_checker_passes_code_and_contracts():
    assert not measured_figures("```python\nmodel = interp.load('qwen2.5-coder-0.5b-instruct')  # 24 layers\n```\n")
    assert not measured_figures("KL on harmless prompts below 0.1; K=48 heads as in the paper.")


def test_every_page_in_the_navigation_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    generated = {f"tutorials/{p.stem}.md" for p in (ROOT / "notebooks").glob("*.ipynb")}
    generated |= {f"reference/{name}.md" for name in _hooks_reference()}

    def paths(nav):
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from paths(value) if isinstance(value, list) else [value]

    named = list(paths(config["nav"]))
    missing = [p for p in named if not (DOCS / p).is_file() and p not in generated]
    assert not missing, f"pages in mkdocs.yml's nav that neither exist nor are generated: {missing}"
    assert generated <= set(named), f"generated pages missing from the nav: {sorted(generated - set(named))}"
    on_disk = {str(p.relative_to(DOCS)) for p in pages()} | {"results.md"}
    assert on_disk <= set(named), f"pages not in the nav: {sorted(on_disk - set(named))}"


def _hooks_reference() -> list[str]:
    """The reference pages docs/hooks.py generates (read from its source: mkdocs need not be installed)."""
    source = (DOCS / "hooks.py").read_text()
    block = source[source.index("REFERENCE = {"):source.index("}\n", source.index("REFERENCE = {"))]
    return re.findall(r'^\s+"([\w.]+)": \(', block, flags=re.M)


def test_every_analysis_has_a_guide_and_every_package_a_reference_page():
    guides = {p.stem for p in (DOCS / "guides").glob("*.md")}
    analyses = {p.stem for p in (ROOT / "analyses").glob("*.py")} - {"__init__", "result", "demo", "miniature"}
    assert analyses <= guides, f"analyses without a guide: {sorted(analyses - guides)}"
    reference = set(_hooks_reference())
    packages = {"interp", "probes", "analyses"} | {f"interp.{p.name}" for p in (ROOT / "interp").iterdir()
                                                   if (p / "__init__.py").is_file()}
    assert packages <= reference, f"packages without a reference page: {sorted(packages - reference)}"


def test_reference_pages_list_every_module():
    hooks = _load_hooks()
    page = hooks.reference_page("interp.core", ["interp.core", "interp.core.backends"])
    for module in (ROOT / "interp" / "core").glob("*.py"):
        if not module.name.startswith("_"):
            assert f"::: interp.core.{module.stem}\n" in page


def _load_hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short_and_keeps_the_setup_commands_and_links():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 150, f"the README has {len(lines)} lines; keep it a five-minute read (details go to docs/)"
    assert "make demo" in text and "make test" in text and "make docs" in text
    assert "## Supported architecture families" in text
    assert "<!-- families table: generated" in text
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_demo_explains_relaxed_filters_in_plain_words():
    from analyses.refusal import explain_relaxations
    from tests.test_browser import refusal_result

    res = refusal_result()
    assert explain_relaxations(res, "m", 64) == [
        "Every check of Arditi et al.'s method passed as published: the direction was chosen without loosening any "
        "filter."]
    res.filter_counts = {"harmful_train": {"given": 128, "kept": 20, "rule": "first_token", "relaxed": True},
                         "harmful_val": {"given": 32, "kept": 32, "rule": "none", "relaxed": True},
                         "harmless_train": {"given": 128, "kept": 127, "rule": "score", "relaxed": False}}
    res.relaxations = ["harmful_train: ...", "harmful_val: ...", "direction selection: ..."]
    res.chosen["relaxed"] = "no candidate passed all filters; dropped the addition filter, KL < 0.1"
    text = "\n".join(explain_relaxations(res, "qwen2.5-coder-0.5b-instruct", 64))
    assert "What the loosened checks mean for your result on qwen2.5-coder-0.5b-instruct" in text
    assert "the 20 of 128 it refuses with its first word" in text and "noisier" in text
    assert "all 32, including some the model answers" in text
    assert "may not be a clean on/off switch" in text
    assert "What you can do:" in text and "interp demo --n 128" in text and "--system none" in text
    assert "harmless_train" not in text  # a filter that was not relaxed is not mentioned


def test_the_readme_families_table_is_the_site_table():
    """The README's table is generated from interp.core.sites; regenerate it when the table changes."""
    from interp.core.sites import FAMILIES, families_markdown

    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- families table: generated")
    start = text.index("\n", start) + 1
    end = text.index("<!-- end of families table -->")
    assert text[start:end].strip() == families_markdown(), "README families table is stale: paste families_markdown()"
    assert len(FAMILIES) == 22


def test_a_tutorial_keeps_its_plotly_figures(tmp_path):
    """An executed notebook's plotly outputs (stored as plotly JSON only) reach the tutorial page as HTML that draws
    once plotly.js, loaded after the content by the theme, is there."""
    import importlib.util

    import nbformat
    import plotly.graph_objects as go

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [nbformat.v4.new_output("display_data", data={hooks.PLOTLY: go.Figure(go.Bar(y=[1, 2])).to_plotly_json()})]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "t.ipynb")
    text, _ = hooks.notebook_page(tmp_path / "t.ipynb")
    assert 'class="plotly-graph-div"' in text and 'window.addEventListener("load", function () {' in text
    assert "Run it to see the outputs" not in text


def test_the_readme_papers_table_is_current():
    """The README's paper-beside-ours table is generated from the results files (benchmarks/papers.py); every paper
    gets a verdict of the three, and the results page opens with the same table."""
    from benchmarks import papers

    text = README.read_text(encoding="utf-8")
    assert papers.readme_block(text) == papers.papers_markdown(), \
        "README papers table is stale: run `python -m benchmarks.papers --readme`"
    rows = papers.rows()
    assert len(rows) == 7 and all(ours.verdict in papers.VERDICTS for _, ours in rows)
    assert all(ours.why for _, ours in rows if ours.verdict != papers.REPRODUCED)
    assert "## Each paper beside ours" in results_page.render()
