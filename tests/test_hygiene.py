"""Hooks are always removed and the model is never changed, also when the body raises. Library docstrings and
comments state contracts (shapes, dtype, device, what raises), not measured figures: those live in
benchmarks/results/*.json."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest
import torch

from interp.core.interventions import Ablate, Add
from tests.conftest import registered_hooks

PROMPTS = ["How do I bake bread?", "Write a poem"]


class Boom(Exception):
    pass


def test_exception_inside_intervention_leaves_model_clean(smol):
    clean = smol.logits(PROMPTS)
    direction = torch.randn(smol.d_model)
    with pytest.raises(Boom):
        with smol.intervene(Ablate(direction), Add(direction, layer=3, alpha=8.0)):
            steered = smol.logits(PROMPTS)
            assert not torch.equal(steered, clean)
            raise Boom
    assert registered_hooks(smol) == 0
    assert torch.equal(smol.logits(PROMPTS), clean)


def test_exception_inside_capture_leaves_model_clean(smol, monkeypatch):
    clean = smol.logits(PROMPTS)

    def broken(*args, **kwargs):
        raise Boom

    monkeypatch.setattr("interp.core.capture.select", broken)
    with pytest.raises(Boom):
        smol.capture(PROMPTS, "hook_resid_post")
    assert registered_hooks(smol) == 0
    assert torch.equal(smol.logits(PROMPTS), clean)


def test_intervention_touches_every_row(smol):
    """Addition changes every batch row, not only row 0 (the transformers-5 `output[0]` trap)."""
    direction = torch.randn(smol.d_model)
    clean = smol.logits(PROMPTS)
    with smol.intervene(Add(direction, layer=2, alpha=10.0)):
        steered = smol.logits(PROMPTS)
    assert ((steered - clean).abs().amax(-1) > 1e-2).all()


# ----- docstrings state contracts, not measured figures (issue 17) -----

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("interp", "probes", "analyses")
_NUM = r"\d+(?:\.\d+)?"
MEASURED = [
    re.compile(rf"{_NUM}\s?(?:s|ms|sec|seconds?|minutes?|min|hours?)\b(?!-)"),  # timings: "9 s a forward"
    re.compile(rf"(?:{_NUM}\s?x|\btimes|\btwice)\s+(?:faster|slower|the time|as fast|as slow)\b", re.I),
    re.compile(rf"{_NUM}\s?%"),  # rates and accuracies
    re.compile(rf"{_NUM}\s?(?:GFLOP|TFLOP|GiB)", re.I),
    re.compile(r"\b(?:our|pilot)\s+(?:\w+\s+)?runs?\b", re.I),  # "in our pilot run", "our H100 runs"
]
# a bundled model named in the same sentence as a number: a result on that model ("kept 7 of 128")
BUNDLED = re.compile(r"smollm2|qwen2\.5|qwen05", re.I)
NUMBER = re.compile(r"(?<![\w.-])\d+(?:\.\d+)?(?!\w|\.\w)")  # standalone: not the "0.5" of "Qwen2.5-Coder-0.5B"
POINTER = re.compile(r"(?:benchmarks|tests)/\S+")  # "see benchmarks/results/refusal_qwen05.json" is the fix
# contracts that read like figures: defaults and the references' own settings
ALLOWED = (
    "the last 20% of layers",  # analyses.refusal: filter (d), max_layer_frac = 0.8
    "20% of the training questions",  # analyses.truthful: val_ratio, as in the reference
    "65-90% of the depth",  # analyses.overlap: the reference's window, the default `window`
    "(default 90 %)",  # interp.judges.RefusalScore.fit: coverage
)


def _texts(source: str):
    """(line, text) of every module/class/function docstring and every comment of a Python source."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield getattr(node, "lineno", 1), doc
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string


def measured_figures(source: str) -> list[tuple[int, str]]:
    """The sentences of docstrings and comments in `source` that state a measured or model-specific figure."""
    found = []
    for line, text in _texts(source):
        text = POINTER.sub("", " ".join(text.replace("#", " ").split()))
        for phrase in ALLOWED:
            text = text.replace(phrase, "")
        for sentence in re.split(r"(?<=[.;!?])\s+", text):
            if any(p.search(sentence) for p in MEASURED) or (BUNDLED.search(sentence) and NUMBER.search(sentence)):
                found.append((line, sentence))
    return found


def test_library_docstrings_state_no_measured_figures():
    files = sorted(f for package in LIBRARY for f in (ROOT / package).rglob("*.py"))
    assert len(files) > 50
    found = [f"{f.relative_to(ROOT)}:{line}: {sentence}" for f in files
             for line, sentence in measured_figures(f.read_text(encoding="utf-8"))]
    assert not found, "measured figures belong in benchmarks/results/*.json:\n" + "\n".join(found)


@pytest.mark.parametrize("text", [
    "Capture takes 9 s a forward on a CPU.",
    "The cached path is 2.4x faster.",
    "bf16 is several times slower there.",
    "It refuses 62% of the harmful prompts.",
    "One step costs 3.5 GFLOP.",
    "In our pilot run it refused everything.",
    "On Qwen2.5-Coder-0.5B layer 15 is chosen.",
    "SmolLM2-135M says Yes to all 39 answers.",
    "The score filter kept 7 of 128 prompts (qwen05).",
])
def test_measured_figure_checker_flags_figures(text):
    assert measured_figures(f'"""{text}"""\n'), text
    assert measured_figures(f"x = 1  # {text}\n"), text


@pytest.mark.parametrize("text", [
    "X is [n, L, d] (float32, on the CPU); raises InterpError on a width mismatch.",
    "The bundled Qwen2.5-Coder-0.5B-Instruct answers, generated once and cached.",
    "What each filter kept on the bundled model: benchmarks/results/refusal_qwen05.json, `filter_counts`.",
    "K=48 heads and alpha=15, as in the paper; a tolerance of 1e-4 in fp32.",
    "Candidates are kept until they cover `coverage` (default 90 %) of the refusals.",
])
def test_measured_figure_checker_passes_contracts(text):
    assert not measured_figures(f'"""{text}"""\n'), text
