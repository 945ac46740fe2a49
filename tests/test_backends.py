"""The three capture backends (hooks, TransformerLens, nnsight) give the HF forward's values, and each other's.

Each non-default backend gets its own Model (TransformerLens rewires the HF module tree in place), loaded once
per module; the session fixtures `smol` and `qwen` are the hooks backend and the reference forward.
"""

from __future__ import annotations

import pytest
import torch

import interp
from interp.core.backends.nnsight_backend import NnsightBackend, _element
from interp.core.backends.tl import TransformerLensBackend
from interp.core.hooks import eager_attention
from interp.core.sites import KINDS
from interp.errors import InterpError
from tests.conftest import DTYPE, load, tol

PROMPTS = ["Hi", "Name three primes.", "Explain in one sentence why the sky looks blue at noon."]
TOL = tol(DTYPE)
MODELS = {"smol": "smollm2-135m-instruct", "qwen": "qwen2.5-coder-0.5b-instruct"}


def _load(name: str, backend: str) -> interp.Model:
    return load(MODELS[name], backend=backend)


@pytest.fixture(scope="module")
def smol_tl() -> interp.Model:
    return _load("smol", "transformer_lens")


@pytest.fixture(scope="module")
def smol_nnsight() -> interp.Model:
    return _load("smol", "nnsight")


@pytest.fixture(scope="module")
def qwen_tl() -> interp.Model:
    return _load("qwen", "transformer_lens")


@pytest.fixture(scope="module")
def qwen_nnsight() -> interp.Model:
    return _load("qwen", "nnsight")


def _model(request, name: str, backend: str) -> interp.Model:
    suffix = {"hooks": "", "transformer_lens": "_tl", "nnsight": "_nnsight"}[backend]
    return request.getfixturevalue(name + suffix)


@pytest.fixture(scope="module")
def reference(request):
    """Per model and attention implementation: the left-padded batch and the plain HF forward's hidden states.

    TransformerLens runs the model with eager attention; eager and SDPA differ by float rounding (about 1e-4
    deep in SmolLM2's residual stream), so each backend is held to the HF forward it actually runs."""
    cache = {}

    def get(name: str, attn: str):
        if (name, attn) not in cache:
            model = request.getfixturevalue(name)
            batch = model.tokenize(model.prepare_prompts(PROMPTS))
            with torch.no_grad(), eager_attention(model, attn == "eager"):
                hs = model.hf(**batch.inputs(), use_cache=False, output_hidden_states=True).hidden_states
            cache[name, attn] = (batch, [h.float().cpu() for h in hs])  # where captures land
        return cache[name, attn]

    return get


@pytest.mark.parametrize("name", ["smol", "qwen"])
@pytest.mark.parametrize("backend", ["hooks", "transformer_lens", "nnsight"])
@pytest.mark.parametrize("positions", ["last", "all"])
def test_resid_post_equals_hidden_states(request, reference, name, backend, positions):
    model = _model(request, name, backend)
    # the full forward, as HF runs it (the shared-prefix KV cache path is checked in test_capture.py)
    acts = model.capture(PROMPTS, "hook_resid_post", positions=positions, use_prefix_cache=False)
    attn = model.hf.config._attn_implementation
    assert attn == ("eager" if backend == "transformer_lens" else "sdpa")
    batch, hs = reference(name, attn)
    mask = batch.attention_mask.bool().cpu()
    assert acts.mask is None or torch.equal(acts.mask, mask)
    norm = request.getfixturevalue(name).hf.get_submodule(model.family.final_norm)  # untouched reference module
    n = model.n_layers
    for layer in range(n):
        got = acts[f"blocks.{layer}.hook_resid_post"]
        want = hs[layer + 1]
        if layer == n - 1:  # HF's last hidden state has the final norm applied
            with torch.no_grad():
                got = norm(got.to(model.device, model.dtype)).float().cpu()
        if positions == "last":
            assert got.shape == (len(PROMPTS), model.d_model)
            diff = (got - want[:, -1]).abs().max()
        else:
            assert got.shape == (len(PROMPTS), mask.shape[1], model.d_model)
            diff = (got[mask] - want[mask]).abs().max()
            assert not acts[f"blocks.{layer}.hook_resid_post"][~mask].any(), "pads must be zeroed"
        assert diff <= TOL, (backend, layer, float(diff))


# attn.hook_q|k|v (path patching) are hooks-backend sites only
OTHER_KINDS = [k for k in KINDS if k not in ("hook_resid_post", "attn.hook_pattern", "attn.hook_q", "attn.hook_k", "attn.hook_v")]


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_every_kind_agrees_with_hooks_backend(request, smol, backend):
    other = _model(request, "smol", backend)
    got = other.capture(PROMPTS, OTHER_KINDS, positions="all")
    with eager_attention(smol, other.hf.config._attn_implementation == "eager"):  # like with like (see reference)
        want = smol.capture(PROMPTS, OTHER_KINDS, positions="all")
    assert set(got.acts) == set(want.acts) and len(got.acts) == len(OTHER_KINDS) * smol.n_layers
    for site, x in want.acts.items():
        assert got[site].shape == x.shape, site
        assert (got[site] - x).abs().max() <= TOL, (backend, site)
    assert got["blocks.4.attn.hook_z"].shape[2:] == (smol.n_heads, smol.d_head)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_attention_pattern_agrees_with_hooks_backend(request, smol, backend):
    other = _model(request, "smol", backend)
    sites = ["blocks.0.attn.hook_pattern", "blocks.17.attn.hook_pattern"]
    want = smol.capture(PROMPTS, sites, positions="last")
    got = other.capture(PROMPTS, sites, positions="last")
    for s in sites:
        assert got[s].shape == want[s].shape == (len(PROMPTS), smol.n_heads, want[s].shape[-1])
        assert torch.allclose(got[s].sum(-1), torch.ones(len(PROMPTS), smol.n_heads), atol=1e-5)
        assert (got[s] - want[s]).abs().max() <= TOL, (backend, s)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
@pytest.mark.integration  # boots SmolLM2 on each backend
def test_forward_stops_after_deepest_layer(request, backend):
    model = _model(request, "smol", backend)
    calls = []  # pre-hooks: nnsight stops from inside its own output hook, before later output hooks would run
    last = model.layers[model.n_layers - 1].register_forward_pre_hook(lambda *a: calls.append("last layer"))
    norm = model.hf.get_submodule(model.family.final_norm).register_forward_pre_hook(lambda *a: calls.append("norm"))
    try:
        # one forward each: no shared-prefix pass, and nnsight's order of these modules learnt beforehand (by a
        # forward that stops at the same layer)
        deepest = f"blocks.{model.n_layers - 1}.hook_resid_post"
        for site in ("blocks.3.hook_resid_post", deepest):
            model.capture(PROMPTS, site, use_prefix_cache=False)
        calls.clear()
        acts = model.capture(PROMPTS, "blocks.3.hook_resid_post", use_prefix_cache=False)
        assert acts["blocks.3.hook_resid_post"].shape == (len(PROMPTS), model.d_model)
        assert calls == []
        model.capture(PROMPTS, deepest, use_prefix_cache=False)
        assert calls == ["last layer"]  # the deepest layer ran; the final norm did not
    finally:
        last.remove()
        norm.remove()


def test_transformer_lens_rejects_kinds_the_bridge_lacks(smol_tl, monkeypatch):
    monkeypatch.setattr(TransformerLensBackend, "supported_kinds", lambda self: ["hook_resid_post"])
    with pytest.raises(InterpError, match="supports hook_resid_post"):
        smol_tl.capture(PROMPTS, ["blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"])


def test_nnsight_never_indexes_a_bare_layer_output():
    """transformers 5 decoder layers return a tensor: `output[0]` would be batch row 0."""
    x = torch.randn(3, 5, 8)
    assert _element(x, "hook_resid_post") is x
    assert _element((x, None), "hook_attn_out") is x
    with pytest.raises(InterpError, match="eager attention"):
        _element((x, None), "attn.hook_pattern")


def test_nnsight_remote_path_and_backend_options(smol):
    """remote= is forwarded to the trace; "local" runs nnsight's serialise-and-run path without a server."""
    model = _load("smol", "nnsight")
    model.backend_options = {"remote": "local"}
    assert isinstance(model.backend, NnsightBackend) and model.backend.remote == "local"
    sites = ["blocks.2.hook_resid_post", "blocks.2.attn.hook_z"]
    got = model.capture(PROMPTS, sites)
    want = smol.capture(PROMPTS, sites)
    for s in sites:
        assert (got[s] - want[s]).abs().max() <= TOL
    bad = _load("smol", "hooks")
    bad.backend_options = {"remote": True}
    with pytest.raises(InterpError, match="only nnsight"):
        _ = bad.backend  # the property raises
