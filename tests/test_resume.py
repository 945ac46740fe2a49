"""Long runs survive a kill: the truthful fit, the abliteration search, the concepts analysis and the patching sweeps
record their finished units as they go (`interp.core.progress`), and a rerun with the same folder resumes where it
stopped, computes only what was not recorded, and returns the Result an uninterrupted run returns. Each analysis is
interrupted part way (KeyboardInterrupt from a step; one real SIGKILL of the command line) on a tiny random model."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from analyses import abliteration as ab
from analyses import concepts as C
from analyses import patching
from analyses import truthful as T
from interp.circuits import patching as P
from interp.circuits.tasks import TaskSet, logit_diffs
from interp.cli import app
from interp.core.interventions import Ablate
from interp.core.progress import LOG, Checkpoint, Progress, progress_files
from interp.core.subspace import Direction
from interp.data.truthfulqa import read_questions
from interp.errors import InterpError
from interp.io import read_tensors
from tests import test_abliteration as A
from tests.test_patching import ITEMS
from tests.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("seconds", "timings_s", "time_per_token")  # wall-clock measurements: not part of the result compared


@pytest.fixture
def tiny(tokenizer):
    return tiny_model("qwen2", tokenizer)


def assert_same(a, b, path: str = "") -> None:
    """a == b for JSON-like values, numbers to float32 rounding (relative 1e-5, absolute 1e-4)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), (path, sorted(a.keys() ^ b.keys()))
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-4), (path, a, b)
    else:
        assert a == b, (path, a, b)


def comparable(result) -> tuple[str, dict[str, str]]:
    """A Result's summary (without its timings) and every figure's data, as text."""
    summary = {k: v for k, v in result.summary().items() if k not in MEASURED}
    return json.dumps(summary, sort_keys=True, default=str), {k: f.to_json() for k, f in result.figures().items()}


class Counted:
    """Wraps `owner.name` (a module's function or a class's method), counting calls; the call numbered `stop`
    (1-based) raises KeyboardInterrupt instead, as a kill there would stop the run."""

    def __init__(self, monkeypatch, owner, name: str, stop: int | None = None):
        fn = getattr(owner, name)
        while isinstance(fn, Counted):  # wrap the original, not an earlier count
            fn = fn.fn
        self.fn, self.calls, self.stop = fn, 0, stop
        monkeypatch.setattr(owner, name, self)

    def __get__(self, instance, owner=None):  # as a method: bound to its instance
        return self if instance is None else functools.partial(self, instance)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return self.fn(*args, **kwargs)


def units(directory: Path) -> list[str]:
    lines = (directory / LOG).read_text().splitlines()
    return [json.loads(line)["unit"] for line in lines[1:]]


# ----- the record itself -----

def test_units_are_recorded_read_back_and_a_torn_last_line_is_dropped(tmp_path):
    settings = {"config": {"a": 1, "b": (2, 3)}}
    p = Progress.open(tmp_path / "run", "demo", settings)
    assert not (tmp_path / "run").exists()  # nothing is written before a unit finishes
    t = torch.randn(3, 4, dtype=torch.bfloat16)
    first = p.unit("x", lambda: {"t": t, "pair": (1, 2.5), "s": "é"})
    assert torch.equal(first.pop("t"), t) and first == {"pair": [1, 2.5], "s": "é"}
    assert p.unit("y", lambda: [0.1, float("nan")])[0] == 0.1
    with open(tmp_path / "run" / LOG, "a") as f:  # a kill in the middle of writing a line
        f.write('{"unit": "z", "val')
    again = Progress.open(tmp_path / "run", "demo", settings)
    assert len(again) == 2 and again.done("x") and not again.done("z")
    got = again.unit("x", lambda: pytest.fail("recomputed"))
    assert torch.equal(got["t"], t) and got["t"].dtype == torch.bfloat16 and got["pair"] == [1, 2.5]
    assert again.unit("z", lambda: 7) == 7 and again.reused == 1 and again.computed == 1
    lines = (tmp_path / "run" / LOG).read_text().splitlines()
    assert [json.loads(line).get("unit") for line in lines] == [None, "x", "y", "z"]  # the torn line is gone
    tensors = [p.name for p in progress_files(tmp_path / "run") if p.suffix == ".safetensors"]
    assert tensors == ["progress.1.safetensors"] and torch.equal(read_tensors(tmp_path / "run" / tensors[0])["0"], t)
    nothing = Progress.open(None, "demo", settings)  # no checkpoint: computed every time, the same round trip
    assert nothing.unit("x", lambda: {"pair": (1, 2)}) == {"pair": [1, 2]} and nothing.path is None
    with pytest.raises(TypeError, match="keys must be strings"):
        nothing.unit("bad", lambda: {1: 2})


def test_progress_of_other_settings_is_refused_in_one_line_or_started_over(tmp_path):
    p = Progress.open(tmp_path, "demo", {"config": {"alpha": 1.0, "k": 2}})
    p.unit("a", lambda: {"t": torch.zeros(2)})
    with pytest.raises(InterpError) as e:
        Progress.open(tmp_path, "demo", {"config": {"alpha": 2.0, "k": 2}})
    msg = str(e.value)
    assert "\n" not in msg and "other settings" in msg and "config.alpha" in msg and "config.k" not in msg
    assert "--overwrite" in msg
    with pytest.raises(InterpError, match="not 'other'") as e:
        Progress.open(tmp_path, "other", {"config": {"alpha": 1.0, "k": 2}})
    assert "\n" not in str(e.value)
    fresh = Progress.open(Checkpoint(tmp_path, "restart"), "demo", {"config": {"alpha": 2.0, "k": 2}})
    assert len(progress_files(tmp_path)) == 2  # removed only when the new run records its first unit
    fresh.unit("b", lambda: 1)
    assert units(tmp_path) == ["b"] and [f.name for f in progress_files(tmp_path)] == [LOG]
    (tmp_path / LOG).write_text('{"something": "else"}\n')
    with pytest.raises(InterpError, match="not a progress record"):
        Progress.open(tmp_path, "demo", {})


# ----- the truthful fit: capture, baseline, per-fold fits, grid points, held-out scores, costs -----

TRUTHFUL = T.TruthfulConfig(grid_heads=(2, 4), grid_alphas=(1.0, 5.0), n_tune=2, n_cost=2, cost_tokens=4,
                            n_examples=1)


def test_truthful_fit_resumes_after_an_interrupt_without_recomputing(tiny, tmp_path, monkeypatch):
    qs = read_questions(n=8)
    whole = Counted(monkeypatch, T, "mc_eval")
    reference = T.run(tiny, qs, TRUTHFUL, checkpoint=tmp_path / "whole")
    total = whole.calls  # baseline, 4 grid points and the held-out scores of each of 2 folds
    assert total == 1 + 2 * (4 + 1)
    assert comparable(T.run(tiny, qs, TRUTHFUL)) == comparable(reference)  # no checkpoint: the same Result

    stop = 4  # inside fold 0's grid
    Counted(monkeypatch, T, "mc_eval", stop=stop)
    with pytest.raises(KeyboardInterrupt):
        T.run(tiny, qs, TRUTHFUL, checkpoint=tmp_path / "cut")
    assert units(tmp_path / "cut")[-1] == "fold 0/grid K=2 alpha=5.0"
    again = Counted(monkeypatch, T, "mc_eval")
    captures = Counted(monkeypatch, T, "head_activations")
    resumed = T.run(tiny, qs, TRUTHFUL, checkpoint=tmp_path / "cut")
    assert again.calls == total - (stop - 1) and captures.calls == 0  # nothing finished was computed again
    assert comparable(resumed) == comparable(reference)
    assert torch.equal(resumed.activations, reference.activations)
    assert torch.equal(resumed.final.directions, reference.final.directions)
    with pytest.raises(InterpError, match="other settings.*grid_alphas"):
        T.run(tiny, qs, T.TruthfulConfig(**{**TRUTHFUL.__dict__, "grid_alphas": (1.0,)}), checkpoint=tmp_path / "cut")


# ----- the abliteration search: the Optuna study in SQLite, then the judged points -----

def _abliteration_data(model) -> ab.AbliterationData:
    ref = Ablate(Direction(torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))))
    return ab.AbliterationData(A.HARMFUL, A.HARMLESS, A.VAL_HARMFUL, A.VAL_HARMLESS, A.TEST_HARMFUL, A.TEST_HARMLESS,
                               refusal=A._tiny_refusal(model), reference=ref)


ABLITERATION = ab.AbliterationConfig(n_trials=8, n_startup_trials=3, max_new_tokens=2, final_points=3, batch_size=8)


def test_abliteration_search_resumes_its_study_and_judgements(tiny, tmp_path, monkeypatch):
    import optuna

    data = _abliteration_data(tiny)
    scored = Counted(monkeypatch, ab._Evaluator, "__call__")
    judged = Counted(monkeypatch, ab, "judge_point")
    reference = ab.run(tiny, data, ABLITERATION, checkpoint=tmp_path / "whole")
    n_scored, n_judged = scored.calls, judged.calls  # the unedited model, 8 trials, the reference; the judgements
    assert n_scored == 1 + 8 + 1 and n_judged >= 4
    assert (tmp_path / "whole" / "progress.study.db").is_file()
    plain = ab.run(tiny, data, ABLITERATION)  # in memory: the same trials
    assert comparable(plain) == comparable(reference)

    # 1. killed during trial 5 (the 6th scoring): trial 5 is left running in the study
    scored = Counted(monkeypatch, ab._Evaluator, "__call__", stop=1 + 6)
    with pytest.raises(KeyboardInterrupt):
        ab.run(tiny, data, ABLITERATION, checkpoint=tmp_path / "cut")
    study = optuna.load_study(study_name="abliteration", storage=f"sqlite:///{tmp_path / 'cut' / 'progress.study.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE"] * 5 + ["RUNNING"]
    # 2. killed again at the second judgement
    scored = Counted(monkeypatch, ab._Evaluator, "__call__")
    judged = Counted(monkeypatch, ab, "judge_point", stop=2)
    with pytest.raises(KeyboardInterrupt):
        ab.run(tiny, data, ABLITERATION, checkpoint=tmp_path / "cut")
    assert scored.calls == 1 + (8 - 5)  # the unedited model, then only the trials not finished
    assert units(tmp_path / "cut") == ["validation/no edit"]
    # 3. to the end
    scored = Counted(monkeypatch, ab._Evaluator, "__call__")
    judged = Counted(monkeypatch, ab, "judge_point")
    resumed = ab.run(tiny, data, ABLITERATION, checkpoint=tmp_path / "cut")
    assert scored.calls == 1 + 1 and judged.calls == n_judged - 1  # the unedited model and the reference's proxy
    assert comparable(resumed) == comparable(reference)
    assert torch.equal(resumed.directions, reference.directions)
    states = [t.state.name for t in optuna.load_study(study_name="abliteration", storage=(
        f"sqlite:///{tmp_path / 'cut' / 'progress.study.db'}")).trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 8


# ----- the concepts analysis: captures, clusters, selection, refinement, test answers -----

CONCEPTS = C.ConceptsConfig(targets=("cpp", "java"), n_test=3, n_val=3, n_train=8, k=2, n_select=2, select_tokens=4,
                            max_new_tokens=6, n_refine=4, refine_tokens=4, refine_epochs=1, n_timing=2, timing_tokens=2,
                            timing_runs=1, n_examples=1)


def test_concepts_resumes_after_an_interrupt_without_recomputing(tiny, tmp_path, monkeypatch):
    refined = Counted(monkeypatch, C, "refine")
    captured = Counted(monkeypatch, C, "last_token_acts")
    reference = C.run(tiny, config=CONCEPTS, checkpoint=tmp_path / "whole")
    assert refined.calls == 2 and captured.calls == 3

    Counted(monkeypatch, C, "refine", stop=2)  # the second language's refinement
    with pytest.raises(KeyboardInterrupt):
        C.run(tiny, config=CONCEPTS, checkpoint=tmp_path / "cut")
    assert units(tmp_path / "cut")[-1] == "refine/cpp"
    refined = Counted(monkeypatch, C, "refine")
    captured = Counted(monkeypatch, C, "last_token_acts")
    selected = Counted(monkeypatch, C, "select")
    resumed = C.run(tiny, config=CONCEPTS, checkpoint=tmp_path / "cut")
    assert refined.calls == 1 and captured.calls == 0 and selected.calls == 0
    assert comparable(resumed) == comparable(reference)
    assert resumed.answers == reference.answers
    for lang in CONCEPTS.targets:
        a, b = resumed.router(lang), reference.router(lang)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.centroids, b.centroids)


# ----- the patching sweeps: every forward of a sweep is a unit -----

def _solved_task(model) -> TaskSet:
    """The hand-written IOI pairs, each answer swapped with the wrong one where the random model prefers it."""
    task = TaskSet("ioi_hand", list(ITEMS))
    diffs = logit_diffs(model, task)
    items = [i if d > 0 else type(i)(i.clean, i.corrupted, i.wrong, i.answer) for i, d in zip(ITEMS, diffs.tolist())]
    return TaskSet("ioi_hand", items)


PATCHING = patching.PatchingConfig(sites=("resid", "heads"), rows_per_forward=5)


def test_patching_sweeps_resume_after_an_interrupt_without_recomputing(tiny, tmp_path, monkeypatch):
    task = _solved_task(tiny)
    forwards = Counted(monkeypatch, P, "_rows_forward")
    reference = patching.run(tiny, task, PATCHING, checkpoint=tmp_path / "whole")
    total = forwards.calls
    assert total > 6 and comparable(patching.run(tiny, task, PATCHING)) == comparable(reference)

    Counted(monkeypatch, P, "_rows_forward", stop=total - 2)  # in the second grid
    with pytest.raises(KeyboardInterrupt):
        patching.run(tiny, task, PATCHING, checkpoint=tmp_path / "cut")
    again = Counted(monkeypatch, P, "_rows_forward")
    resumed = patching.run(tiny, task, PATCHING, checkpoint=tmp_path / "cut")
    assert again.calls == 3
    assert comparable(resumed) == comparable(reference)
    for name, grid in reference.grids.items():
        assert torch.equal(resumed.grids[name].values, grid.values)


# ----- the command line: a real SIGKILL, the --out rule, the one-line refusal -----

SLOW = """
import atexit, sys, time
from interp.circuits import patching as P
calls = []
plain = P._rows_forward
def slow(*args, **kwargs):
    calls.append(1)
    time.sleep(DELAY)
    return plain(*args, **kwargs)
P._rows_forward = slow
atexit.register(lambda: print(f"rows_forward calls: {len(calls)}", file=sys.stderr))
from interp.cli import main
main()
"""


def _cli(folder: Path, out: Path, rows: int = 5) -> list[str]:
    return ["patch", "--model", str(folder), "--pairs", str(folder / "pairs.jsonl"), "--sites", "resid,heads",
            "--rows-per-forward", str(rows), "--device", "cpu", "--dtype", "float32", "--out", str(out)]


def _launch(folder: Path, out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", SLOW.replace("DELAY", repr(delay)), *_cli(folder, out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # a real subprocess killed part way: the acceptance tier (`make test-slow`)
def test_patch_command_killed_with_sigkill_resumes_to_the_same_result(tiny, tmp_path, monkeypatch):
    import interp

    task = _solved_task(tiny)
    folder = tmp_path / "model"
    tiny.hf.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    (folder / "pairs.jsonl").write_text("".join(json.dumps({"clean": i.clean, "corrupted": i.corrupted, "answer": i.answer,
                                                            "wrong_answer": i.wrong}) + "\n" for i in task.items))
    runner = CliRunner()
    monkeypatch.setattr("interp.cli.common.load_model", lambda name, backend="hooks", **kw: interp.load(
        name, device="cpu", dtype=torch.float32))
    forwards = Counted(monkeypatch, P, "_rows_forward")
    whole = runner.invoke(app, _cli(folder, tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output + repr(whole.exception)
    total = forwards.calls

    out = tmp_path / "killed"
    proc = _launch(folder, out, delay=0.25)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / LOG).is_file() and len((out / LOG).read_text().splitlines()) >= 1 + 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = [u for u in units(out) if u.startswith("sweep")]
    assert 4 <= len(done) < total and all(p.name.startswith("progress.") for p in out.iterdir())
    with open(out / LOG, "a") as f:  # as a kill in the middle of a line leaves it
        f.write('{"unit": "sweep resid/99", "va')

    refused = runner.invoke(app, _cli(folder, out, rows=4))
    assert isinstance(refused.exception, InterpError) and "\n" not in str(refused.exception)
    assert "other settings" in str(refused.exception) and "rows_per_forward" in str(refused.exception)
    (out / "stray.txt").write_text("x")
    stray = runner.invoke(app, _cli(folder, out))
    assert isinstance(stray.exception, InterpError) and "not empty" in str(stray.exception)
    (out / "stray.txt").unlink()

    proc = _launch(folder, out, delay=0.0)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming it" in err and f"rows_forward calls: {total - len(done)}" in err  # nothing done twice
    assert not progress_files(out)  # removed once the results are written
    a, b = (json.loads((d / "result.json").read_text()) for d in (tmp_path / "whole", out))
    a.pop("timings_s"), b.pop("timings_s")
    assert_same(a, b)  # a subprocess resumed: its thread count may round sums differently in the last bits
