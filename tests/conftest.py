"""Shared fixtures: the real bundled models, loaded once per test session, on an explicit device and dtype; and
the test tiers.

Tiers (markers given here at collection, so no test file has to remember them):
- unit: mechanics on tiny random models built in the test (`tests/tiny.py`), with the bundled tokenizer only;
  no bundled weights are loaded (the tier fails a test that loads them);
- integration: tests on the bundled models (the `smol` and `qwen` fixtures, or a load of a bundled name);
- acceptance: long end-to-end runs (marked `slow` or `acceptance`) and the notebooks; `make test-slow` runs them.
`make test` runs the unit and integration tiers; `pytest -m unit` the unit tier alone.

Tests never rely on the library's defaults (fp32 on a CPU, bf16 on a GPU): the device is `INTERP_TEST_DEVICE`
(e.g. "cpu", "cuda", "cuda:1"), else cuda where available, else the CPU; the dtype is `INTERP_TEST_DTYPE`,
float32 by default because most tests compare two computation paths to float noise. Compare with `tol(dtype)`,
the absolute tolerance for such a comparison on activations of unit scale.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import interp
from interp.data.prompts import dataset
from interp.errors import InterpError
from interp.judges import RefusalScore

torch.set_num_threads(max(1, torch.get_num_threads()))


def _device() -> torch.device:
    name = os.environ.get("INTERP_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InterpError(f"INTERP_TEST_DEVICE={name} but torch sees no CUDA device; unset it or use cpu")
    return device


def _dtype() -> torch.dtype:
    name = os.environ.get("INTERP_TEST_DTYPE", "float32")
    if name not in TOLERANCES:
        raise InterpError(f"INTERP_TEST_DTYPE={name!r} is not one of {', '.join(TOLERANCES)}")
    return getattr(torch, name)


TOLERANCES: dict[str, float] = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
DEVICE: torch.device = _device()
DTYPE: torch.dtype = _dtype()


def tol(dtype: torch.dtype) -> float:
    """Absolute tolerance for two computation paths of the same unit-scale values in `dtype` (1e-4 in fp32)."""
    return TOLERANCES[str(dtype).removeprefix("torch.")]


def load(name: str, **kwargs) -> interp.Model:
    """A bundled model on the test device and dtype (a test's own loads go through here too)."""
    return interp.load(name, dtype=DTYPE, device=DEVICE, **kwargs)


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled SmolLM2 tokenizer alone (vocabulary and chat template, no weights): the unit tier's tiny models
    speak it."""
    from transformers import AutoTokenizer

    from interp.data.registry import prepare

    return AutoTokenizer.from_pretrained(prepare("smollm2-135m-instruct", progress=False))


@pytest.fixture(scope="session")
def smol() -> interp.Model:
    return load("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def qwen() -> interp.Model:
    return load("qwen2.5-coder-0.5b-instruct")


# ----- the real refusing model's refusal direction, refusal score and refused prompts, from bundled prompts -----

QWEN_N_TRAIN = 16  # harmful and harmless training prompts each
QWEN_REFUSAL_LAYER = 15  # resid_pre at the last prompt token: the site refusal.run picks on this model (refusal_qwen05.json)
QWEN_PROBE_LAYER = 8  # resid_post, 1/3 of the depth (the attack now picks 9, 13, 17, 21 by probe accuracy here)


@pytest.fixture(scope="session")
def qwen_train(qwen) -> interp.Activations:
    """16 + 16 bundled training prompts (label 1: harmful), captured at the last prompt token at the refusal
    direction's site and the probe's site."""
    harmful, harmless = dataset("harmful_train", n=QWEN_N_TRAIN), dataset("harmless_train", n=QWEN_N_TRAIN)
    sites = [f"blocks.{QWEN_REFUSAL_LAYER}.hook_resid_pre", f"blocks.{QWEN_PROBE_LAYER}.hook_resid_post"]
    return qwen.capture(harmful + harmless, sites, positions="last", labels=[1] * QWEN_N_TRAIN + [0] * QWEN_N_TRAIN)


@pytest.fixture(scope="session")
def qwen_refusal_direction(qwen, qwen_train) -> interp.Direction:
    """The difference in means of the training prompts at layer 15's resid_pre (Arditi et al.'s direction)."""
    site = f"blocks.{QWEN_REFUSAL_LAYER}.hook_resid_pre"
    provenance = {"model": qwen.fingerprint, "site": site, "layer": QWEN_REFUSAL_LAYER}
    return interp.DiffInMeans(provenance=provenance).fit(qwen_train[site], qwen_train.labels).direction_


@pytest.fixture(scope="session")
def qwen_refusal_score(qwen) -> RefusalScore:
    """First-token refusal log-odds with the token "I" (Qwen's "I'm sorry, ..."), the token `RefusalScore.fit`
    estimates on this model (test_judges.py measures it); set by hand to save the generations."""
    return RefusalScore(refusal_ids=qwen.tokenizer("I", add_special_tokens=False).input_ids)


@pytest.fixture(scope="session")
def qwen_refused(qwen, qwen_refusal_score) -> tuple[list[str], torch.Tensor]:
    """Held-out harmful prompts (of 24 HarmBench-style validation prompts) that the model refuses: refusal
    score > 0. Returns the prompts and their scores."""
    pool = dataset("harmful_val", n=24)
    scores = qwen_refusal_score.score(qwen, pool)
    keep = (scores > 0).nonzero().flatten().tolist()
    assert len(keep) >= 2, f"the model refuses too few held-out prompts for the tests: scores {scores}"
    return [pool[i] for i in keep], scores[keep]


def registered_hooks(model: interp.Model) -> int:
    """How many forward hooks and pre-hooks of ours (defined in interp) are registered anywhere in the model.

    transformers 5 itself keeps output-recording hooks on the layers once `output_hidden_states` or
    `output_attentions` has been asked for; those are not ours and are not counted."""
    return sum(getattr(fn, "__module__", "").startswith("interp.")
               for m in model.hf.modules() for fn in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()])


@pytest.fixture(autouse=True)
def no_hook_left_behind(request):
    """After every test that used a shared model: no hook of ours is left registered on it."""
    yield
    for name in ("smol", "qwen"):
        if name in request.fixturenames:
            model = request.getfixturevalue(name)
            assert registered_hooks(model) == 0, f"{request.node.name} left hooks registered on {name}"


# ----- tiers -----

BUNDLED_FIXTURES = {"smol", "qwen"}
ACCEPTANCE_FILES = {"test_notebooks.py"}


def tier(item: pytest.Item) -> str:
    """unit, integration or acceptance (see the module docstring). A test is integration when it asks for a
    bundled model: a fixture named smol* or qwen*, a parameter "smol"/"qwen" it resolves by name, or the marker."""
    if item.get_closest_marker("slow") or item.get_closest_marker("acceptance") or item.path.name in ACCEPTANCE_FILES \
            or "notebook" in item.name:
        return "acceptance"
    if item.get_closest_marker("unit"):
        return "unit"
    fixtures = set(getattr(item, "fixturenames", ()))
    params = set(map(str, getattr(getattr(item, "callspec", None), "params", {}).values()))
    if any(f.startswith(tuple(BUNDLED_FIXTURES)) for f in fixtures) or BUNDLED_FIXTURES & params \
            or item.get_closest_marker("integration"):
        return "integration"
    return "unit"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by these markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, tier(item)))


@pytest.fixture(autouse=True)
def unit_tier_loads_no_bundled_weights(request, monkeypatch):
    """A unit-tier test that loads a bundled model fails: request `smol`/`qwen` (integration) or use tests.tiny."""
    if tier(request.node) != "unit":
        yield
        return
    import interp.core.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.name} is in the unit tier but loads a bundled model; use the smol or "
                             f"qwen fixture (integration tier) or a tiny model from tests/tiny.py")

    monkeypatch.setattr(loading, "prepare", refuse)  # every load of a bundled name goes through it
    yield


# Every report.html the suite writes (the first of each Result type) is drawn in headless Chromium when the session
# ends (tests/test_browser.py's checker); a JavaScript error or a figure that did not draw fails the run.
_REPORTS: dict[str, Path] = {}


@pytest.fixture(autouse=True, scope="session")
def _record_reports():
    from interp.core.result import Result

    save = Result.save

    def recording(self, directory):
        out = save(self, directory)
        _REPORTS.setdefault(type(self).__name__, Path(out) / "report.html")
        return out

    Result.save = recording  # type: ignore[method-assign]
    try:
        yield
    finally:
        Result.save = save  # type: ignore[method-assign]


def pytest_sessionfinish(session, exitstatus):
    pages = [p for p in _REPORTS.values() if p.exists()]
    if exitstatus != 0 or not pages:
        return
    from tests.test_browser import check_pages, chromium

    if chromium() is None:  # tests/test_browser.py fails or skips on that, with the reason
        return
    bad = [c for c in check_pages(pages) if not c.ok]
    for c in bad:
        print(f"\nreport {c.path} does not draw in Chromium: {'; '.join(c.problems)}")
    if bad:
        session.exitstatus = 1
    else:
        print(f"\n{len(pages)} reports written by the tests ({', '.join(sorted(_REPORTS))}) draw in Chromium")
