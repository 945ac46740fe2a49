"""Reports draw in a real browser: every figure of a representative set of report.html files renders in headless
Chromium (Debian's `chromium`, which `make install` puts on the machine) without a JavaScript error, and a report
with a broken figure is flagged. Also the report polish: readable token labels, unscored heat-map cells drawn grey
and explained, the summary table before the figures, figures that fit a laptop screen.

The checker drives Chromium over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ended by
a NUL byte on file descriptors 3 and 4), so it needs nothing beyond the standard library. One browser loads every
page at once; a page fails on an uncaught exception, a console error, a resource that did not load, or a plotly
figure that did not draw (no `.main-svg` in its `.plotly-graph-div`).

Any folder of reports can be checked from the command line, e.g. after `make demo`:

    python -m tests.test_browser out/demo

and `INTERP_REPORTS=dir1:dir2 pytest tests/test_browser.py` adds every report.html under those folders to the test.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from interp.core.result import MAX_WIDTH, Result, caption, figure_caption, report_html

# ----- the checker -----

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars"]
WAIT_MS = 2000  # how long a page's figures may take to draw after the load event

# Resolves once every plotly figure has drawn (or WAIT_MS has passed): how many there are, which did not draw.
CHECK = """new Promise(resolve => {
  const start = Date.now();
  const look = () => {
    const divs = [...document.querySelectorAll('.plotly-graph-div')];
    const drawn = divs.filter(d => d.querySelector('.main-svg') && d._fullLayout && d._fullData);
    if (drawn.length === divs.length || Date.now() - start > WAIT_MS)
      resolve({figures: divs.length, drawn: drawn.length,
               undrawn: divs.filter(d => !drawn.includes(d)).map(d => d.id || '(no id)')});
    else setTimeout(look, 50);
  };
  look();
})""".replace("WAIT_MS", str(WAIT_MS))


def chromium() -> str | None:
    """The Chromium executable on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3: commands in, fd 4: messages out)."""

    def __init__(self, executable: str, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.TemporaryDirectory(prefix="interp-chromium-")
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()

        def fds_3_and_4():  # runs in the child before exec: its ends of the pipes become fds 3 and 4
            a, b = os.dup2(to_browser, 100), os.dup2(from_browser, 101)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={self.profile.name}",
                                      "--remote-debugging-pipe", "about:blank"],
                                     pass_fds=(3, 4), preexec_fn=fds_3_and_4,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._write({"id": 0, "method": "Browser.close"})
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self.profile.cleanup()

    def _write(self, message: dict) -> None:
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError(f"Chromium did not answer within {self.timeout:g} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError(f"Chromium exited (code {self.proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result; events read meanwhile are kept in `events`."""
        return self.call_many([(method, params, session)])[0]

    def call_many(self, commands: list[tuple[str, dict | None, str | None]]) -> list[dict]:
        """Send (method, params, session) commands at once and return their results in order (tabs work on
        theirs meanwhile); events read meanwhile are kept in `events`."""
        ids = {}
        for method, params, session in commands:
            self._id += 1
            ids[self._id] = method
            message: dict = {"id": self._id, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            self._write(message)
        results: dict[int, dict] = {}
        deadline = time.monotonic() + self.timeout
        while len(results) < len(ids):
            reply = self._read(deadline)
            if reply.get("id") in ids:
                if "error" in reply:
                    raise BrowserError(f"{ids[reply['id']]}: {reply['error']}")
                results[reply["id"]] = reply.get("result", {})
            else:
                self.events.append(reply)
        return [results[i] for i in ids]

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self.events.append(self._read(deadline))

    def open(self, url: str) -> str:
        """A new tab on `url` with exceptions, console and log messages recorded; returns its session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Page", "Log"):
            self.call(f"{domain}.enable", session=session)
        navigated = self.call("Page.navigate", {"url": url}, session=session)
        if navigated.get("errorText"):
            self.events.append({"method": "interp.navigationFailed", "sessionId": session,
                                "params": {"text": navigated["errorText"]}})
        return session

    def errors(self, session: str) -> list[str]:
        """Uncaught exceptions, console.error calls and error log entries (e.g. a resource not found) of a tab."""
        out = []
        for event in self.events:
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append("uncaught: " + (details.get("exception", {}).get("description") or details.get("text", "")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                        for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append("log: " + params["entry"].get("text", ""))
            elif method == "interp.navigationFailed":
                out.append("navigation: " + params["text"])
        return out


@dataclass
class PageCheck:
    path: Path
    figures: int = 0
    drawn: int = 0
    undrawn: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = [f"error in the page: {e}" for e in self.errors]
        if self.drawn < self.figures:
            out.append(f"{self.figures - self.drawn} of {self.figures} figures did not draw: {', '.join(self.undrawn)}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def check_pages(paths: list[Path], executable: str | None = None, timeout: float = 60.0) -> list[PageCheck]:
    """Load every page in one headless Chromium (all tabs at once) and check each (`PageCheck.problems`)."""
    executable = executable or chromium()
    if executable is None:
        raise BrowserError("chromium is not installed (Debian: apt-get install -y chromium; `make install` does it)")
    with Browser(executable, timeout) as browser:
        sessions = [browser.open(Path(p).resolve().as_uri()) for p in paths]
        for session in sessions:
            if not any(e.get("method") == "interp.navigationFailed" and e.get("sessionId") == session
                       for e in browser.events):
                browser.wait_for("Page.loadEventFired", session)
        results = browser.call_many([("Runtime.evaluate", {"expression": CHECK, "awaitPromise": True,
                                                           "returnByValue": True}, s) for s in sessions])
        checks = []
        for path, session, result in zip(paths, sessions, results):
            value = result.get("result", {}).get("value") or {}
            checks.append(PageCheck(Path(path), value.get("figures", 0), value.get("drawn", 0),
                                    value.get("undrawn", []), browser.errors(session)))
        return checks


def require_chromium() -> str:
    """Chromium's path; a skip only where it is missing and apt-get is not there to install it, else a failure."""
    found = chromium()
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and this machine has no apt-get to install it; install a Chromium "
                    "and put it on PATH to run the browser checks")
    pytest.fail("chromium is not installed: run `make install` (it runs apt-get install -y chromium) or install it")


# ----- a representative set of reports, from tiny models and synthetic results -----


class Figures(Result):
    """A Result holding given figures (for probe figures and for the broken reports)."""

    def __init__(self, title: str, figures: dict[str, go.Figure], summary: dict | None = None):
        self._title, self._figures, self._summary = title, figures, summary or {"figures": len(figures)}

    @property
    def title(self) -> str:
        return self._title

    def summary(self) -> dict:
        return self._summary

    def figures(self) -> dict[str, go.Figure]:
        return self._figures


POSITION_TOKENS = ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]  # SmolLM2's end of instruction


def refusal_result(layers: int = 6, scored: set[tuple[int, int]] | None = None):
    """A RefusalResult with made-up scores over len(POSITION_TOKENS) x `layers` candidates; only `scored`
    (position index, layer) cells are scored exactly (default: a shortlist of 4 plus every layer's last position),
    as a shortlist run leaves them."""
    from analyses.refusal import RefusalConfig, RefusalResult
    from interp.core.subspace import Direction
    from interp.judges import RefusalScore

    g = torch.Generator().manual_seed(0)
    P, d = len(POSITION_TOKENS), 16
    scored = scored if scored is not None else {(0, 1), (1, 2), (2, 3), (3, 1)} | {(P - 1, l) for l in range(layers)}
    rows = []
    for p in range(P):
        for l in range(layers):
            row = {"position_index": p, "position": p - P, "token": POSITION_TOKENS[p], "layer": l,
                   "predicted_ablation": float(torch.randn(1, generator=g))}
            if (p, l) in scored:
                row.update(ablation_score=float(torch.randn(1, generator=g)), kl=0.05 * (l + 1),
                           addition_score=float(torch.randn(1, generator=g)), passes=l < 2, filtered="")
            rows.append(row)
    chosen = dict(next(r for r in rows if r["position_index"] == P - 1 and r["layer"] == 1), relaxed=None)
    mean_diffs = torch.randn(P, layers, d, generator=g)
    refusal = RefusalScore()
    refusal.refusal_ids_, refusal.refusal_tokens_ = [40], ["I"]
    return RefusalResult(
        Direction.from_vector(mean_diffs[P - 1, 1], {"layer": 1, "position": -1}), rows, chosen,
        {"harmful_refusal_score": 0.5, "harmless_refusal_score": -3.0}, refusal, list(POSITION_TOKENS),
        list(range(layers)), mean_diffs,
        {"harmful": torch.randn(12, d, generator=g) + 1, "harmless": torch.randn(12, d, generator=g)},
        {"total": 1.0}, RefusalConfig(shortlist=4))


@pytest.fixture(scope="module")
def reports(tmp_path_factory, tokenizer) -> dict[Path, int]:
    """report.html of several kinds of Result (path -> number of figures): the refusal direction (heat maps with
    unscored cells, scatter, histograms), probe accuracy by layer and by head, heads as matrices on a tiny model
    (subplots), DAS on the toy; plus every report.html under $INTERP_REPORTS (folders separated by ':')."""
    import probes
    from analyses import heads, subspaces
    from probes.plots import accuracy_figure
    from tests.tiny import tiny_model

    root = tmp_path_factory.mktemp("reports")
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 3, 8, generator=g), [0, 1] * 20
    per_head = probes.evaluate(torch.randn(40, 2, 3, 8, generator=g), y)
    results: dict[str, Result] = {
        "refusal": refusal_result(),
        "probes": Figures("Probes", {"by layer": accuracy_figure(probes.evaluate(X, y)),
                                     "by head": accuracy_figure(per_head)}),
        "heads": heads.run(tiny_model("qwen2", tokenizer), None, heads.HeadsConfig(baseline_samples=8, top=2)),
        "das_toy": subspaces.run_toy("illusion", epochs=2),
    }
    out = {(r.save(root / name) / "report.html"): len(r.figures()) for name, r in results.items()}
    for folder in filter(None, os.environ.get("INTERP_REPORTS", "").split(":")):
        out.update({p: -1 for p in sorted(Path(folder).rglob("report.html"))})  # -1: figure count unknown
    return out


def _broken(root: Path, name: str, break_page) -> Path:
    good = {"curve": go.Figure(go.Scatter(y=[3, 1, 2])), "bars": go.Figure(go.Bar(y=[5, 6]))}
    path = root / name / "report.html"
    path.parent.mkdir()
    path.write_text(break_page(report_html(name, good, {"n": 1})))
    return path


def _second_call(page: str, replacement: str) -> str:
    """`page` with its second figure's `Plotly.newPlot(` call replaced."""
    first = page.index("Plotly.newPlot(")
    second = page.index("Plotly.newPlot(", first + 1)
    return page[:second] + replacement + page[second + len("Plotly.newPlot("):]


BROKEN = {  # name -> how the page is broken
    # the second figure's script throws a TypeError, and the page loads a script that is not there
    "throws": lambda page: _second_call(page, "Plotly.newPlot(undefined.id, ").replace(
        "</head>", "<script src='plotly-missing.js'></script></head>"),
    "never_runs": lambda page: _second_call(page, "void("),  # no error, but the second figure is never drawn
}


@pytest.fixture(scope="module")
def checks(reports, tmp_path_factory) -> dict[Path, PageCheck]:
    """Every report of `reports` and the deliberately broken ones of `BROKEN`, checked in one browser."""
    executable = require_chromium()
    root = tmp_path_factory.mktemp("broken")
    pages = list(reports) + [_broken(root, name, fn) for name, fn in BROKEN.items()]
    return {c.path: c for c in check_pages(pages, executable)}


def test_every_report_draws_in_chromium(reports, checks):
    problems = [f"{path}: {p}" for path in reports for p in checks[path].problems]
    assert not problems, "\n".join(problems)
    for path, expected in reports.items():
        c = checks[path]
        assert expected == -1 or c.figures == expected, f"{path}: {c.figures} figures on the page, {expected} made"
    assert sum(checks[p].drawn for p in reports) >= 20


def test_checker_flags_a_report_with_a_broken_figure(checks):
    """The checker's own test: a report whose second figure's script throws (and that loads a script that is not
    there), and one whose second figure's script never runs (no error, an empty figure) are both flagged; the
    intact reports of `reports` pass (test_every_report_draws_in_chromium)."""
    page = {c.path.parent.name: c for c in checks.values() if c.path.parent.parent.name.startswith("broken")}
    throws, empty = page["throws"], page["never_runs"]
    assert not throws.ok and (throws.figures, throws.drawn) == (2, 1), throws.problems
    assert any("TypeError" in e for e in throws.errors), throws.errors
    assert any("ERR_FILE_NOT_FOUND" in e or "plotly-missing.js" in e for e in throws.errors), throws.errors
    assert not empty.ok and not empty.errors and (empty.figures, empty.drawn) == (2, 1), empty.problems
    assert empty.problems == ["1 of 2 figures did not draw: " + empty.undrawn[0]]


# ----- report polish -----


@pytest.mark.parametrize("token, label", [
    ("Ċ", r"'\n'"), ("ĊĊ", r"'\n\n'"), ("Ġto", "' to'"), ("ĉ", r"'\t'"), ("<|im_end|>", "'<|im_end|>'"),
    ("assistant", "'assistant'"), ("▁the", "' the'"), ("<0x0A>", r"'\n'"), ("Ã©", "'é'"),
])
def test_token_labels_are_readable(token, label):
    from interp.core.labels import token_label

    assert token_label(token) == label


def test_refusal_heatmaps_draw_unscored_cells_grey_and_say_why():
    res = refusal_result()
    figs = res.figures()
    ablation = figs["ablation_score"]
    z = ablation.data[0].z
    assert any(v is None for row in z for v in row) and any(v is not None for row in z for v in row)
    assert ablation.layout.plot_bgcolor == "#bdbdbd"
    assert "not scored (grey)" in [t.name for t in ablation.data]
    text = figure_caption(ablation)
    assert text and "Only 10 of the 30 candidates were scored exactly" in text and "shortlist=None" in text
    assert "attribution patching" in figure_caption(figs["predicted_ablation"])
    assert list(ablation.data[0].y) == ["-5 '<|im_end|>'", r"-4 '\n'", "-3 '<|im_start|>'", "-2 'assistant'", r"-1 '\n'"]
    everything = refusal_result(scored={(p, l) for p in range(5) for l in range(6)}).figures()["ablation_score"]
    assert "All 30 candidates were scored exactly" in figure_caption(everything)
    assert everything.layout.plot_bgcolor is None


def test_report_puts_the_summary_first_and_fits_wide_figures(tmp_path):
    wide = go.Figure(go.Scatter(y=[1, 2]), layout=dict(width=2400, height=1600))
    res = Figures("Layout", {"wide": caption(wide, "a caption <b>escaped</b>")}, {"accuracy": 0.5})
    page = (res.save(tmp_path / "r") / "report.html").read_text()
    assert page.index("<h2>summary</h2>") < page.index("<h2>figures</h2>") < page.index("Plotly.newPlot")
    assert "a caption &lt;b&gt;escaped&lt;/b&gt;" in page and "<details>" in page
    assert '"width":2400' not in page.replace(" ", "") and '"height":800' in page.replace(" ", "")
    assert wide.layout.width == 2400  # the Result's own figure is left as it was
    assert MAX_WIDTH <= 1100


def main(argv: list[str]) -> int:
    """`python -m tests.test_browser FOLDER_OR_FILE...`: check every report.html under the arguments."""
    paths = [p for a in argv for p in ([Path(a)] if Path(a).is_file() else sorted(Path(a).rglob("report.html")))]
    if not paths:
        print("no report.html found under " + " ".join(argv), file=sys.stderr)
        return 2
    failed = 0
    for c in check_pages(paths):
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.path}: {c.drawn}/{c.figures} figures drawn")
        for p in c.problems:
            print(f"     {p}")
        failed += not c.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
