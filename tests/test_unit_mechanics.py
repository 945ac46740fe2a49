"""The unit tier: mechanics on tiny random models of several families, built in the test (no bundled weights).

For every family: the runner's capture equals the hidden states of a plain HF forward read by hand, through left
padding; every intervention kind has the effect it is named after, leaves the weights and the hooks as they were,
and gives the same numbers with the prefix cache on and off; a batched patching sweep equals one location per
forward; DAS keeps an orthonormal basis and a frozen model.
"""

from __future__ import annotations

import pytest
import torch

from interp.circuits import das
from interp.circuits import patching as P
from interp.circuits.heads import ChannelEdit, _o_proj_block
from interp.circuits.tasks import make_task
from interp.core.interventions import (
    Ablate,
    Add,
    Patch,
    Project,
    RowwiseAblate,
    RowwiseAdd,
    Set,
    SubspacePatch,
    WeightedAblate,
)
from interp.core.sites import Site
from interp.errors import InterpError
from interp.steering.head_steering import HeadSteering
from tests.conftest import DEVICE, registered_hooks
from tests.tiny import FAMILIES, tiny_model

pytestmark = pytest.mark.unit

PROMPTS = ["Write a haiku about rain.", "Name three colours of the autumn sky, please."]  # different lengths
ATOL = 1e-5


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tokenizer):
    return tiny_model(request.param, tokenizer, DEVICE)


def _unit(d: int, seed: int, k: int = 1) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.hf.parameters()]


def _hidden(model, prompts) -> tuple[torch.Tensor, ...]:
    """Hidden states of a plain HF forward of the chat-formatted, left-padded prompts: [n_layers + 1] x [b, s, d]."""
    batch = model.pad(model.encode(model.prepare_prompts(prompts)))
    with torch.no_grad():
        return model.hf(**batch.inputs(), output_hidden_states=True, use_cache=False).hidden_states


def test_capture_equals_the_hidden_states_of_a_plain_forward(tiny):
    hs = _hidden(tiny, PROMPTS)
    acts = tiny.capture(PROMPTS, ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"], positions="last")
    assert torch.allclose(acts["blocks.0.hook_resid_pre"].float(), hs[0][:, -1].cpu(), atol=ATOL)
    assert torch.allclose(acts["blocks.0.hook_resid_post"].float(), hs[1][:, -1].cpu(), atol=ATOL)
    assert registered_hooks(tiny) == 0


def _head_steering(model) -> HeadSteering:
    return HeadSteering(heads=[(1, 0)], directions=torch.randn(1, model.d_head, generator=torch.Generator().manual_seed(3)),
                        sigmas=torch.ones(1), alpha=2.0)


def _channel(model) -> ChannelEdit:
    lin, cols = _o_proj_block(model, 1, 0)
    w = lin.weight if isinstance(lin, torch.nn.Linear) else lin.weight.T  # [d, n_heads * d_head]
    v = w[:, cols].detach().float() @ torch.randn(model.d_head, generator=torch.Generator().manual_seed(4)).to(w.device)
    return ChannelEdit(1, 0, (v / v.norm()).unsqueeze(0).cpu(), scale=0.0)


def _kind(model, kind: str):
    d, n = model.d_model, model.n_layers
    return {
        "Add": lambda: Add(torch.randn(d, generator=torch.Generator().manual_seed(0)), layer=1, alpha=3.0),
        "Ablate": lambda: Ablate(_unit(d, 1)),
        "Project": lambda: Project(_unit(d, 2, k=2), sites="blocks.0.hook_resid_post"),
        "Set": lambda: Set("blocks.0.hook_resid_post", torch.full((d,), 0.5), positions=[-1]),
        "RowwiseAdd": lambda: RowwiseAdd(torch.randn(2, d, generator=torch.Generator().manual_seed(5)), layers=[0, 1]),
        "RowwiseAblate": lambda: RowwiseAblate(torch.randn(2, d, generator=torch.Generator().manual_seed(6))),
        "WeightedAblate": lambda: WeightedAblate(torch.randn(n, d, generator=torch.Generator().manual_seed(7)),
                                         attn=[1.0] * n, mlp=[1.0] * n),
        "HeadSteering": lambda: _head_steering(model),
        "ChannelEdit": lambda: _channel(model),
    }[kind]()


KINDS = ["Add", "Ablate", "Project", "Set", "RowwiseAdd", "RowwiseAblate", "WeightedAblate", "HeadSteering",
         "ChannelEdit"]
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.attn.hook_z",
         "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_intervention_kind_has_its_effect_and_leaves_no_trace(tiny, kind):
    if kind == "ChannelEdit" and (tiny.family.conv1d or tiny.family.qkv_proj is None):
        with pytest.raises(InterpError, match="heads as matrices support"):  # a one-line error, not a wrong edit
            _kind(tiny, kind)
        return
    iv = _kind(tiny, kind)
    before = _params(tiny)
    plain = tiny.capture(PROMPTS, SITES, positions=[-1, -2])
    with tiny.intervene(iv):
        cached = tiny.capture(PROMPTS, SITES, positions=[-1, -2], use_prefix_cache=True)
        full = tiny.capture(PROMPTS, SITES, positions=[-1, -2], use_prefix_cache=False)
    for s in SITES:  # the prefix cache decides from the kind whether it may be used; either way the numbers agree
        assert torch.allclose(cached[s].float(), full[s].float(), atol=ATOL), (kind, s)
    assert registered_hooks(tiny) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, _params(tiny)))
    assert any((full[s] - plain[s]).abs().max() > 1e-3 for s in SITES), f"{kind} changed nothing"

    x = {s: full[s].float() for s in SITES}
    if kind == "Add":
        assert torch.allclose(x["blocks.1.hook_resid_pre"] - plain["blocks.1.hook_resid_pre"].float(),
                              3.0 * iv.vector.expand_as(x["blocks.1.hook_resid_pre"]), atol=1e-4)
    elif kind == "Ablate":
        r = iv.subspace[0]
        for s in SITES:
            if "hook_z" not in s:
                assert (x[s] @ r).abs().max() < 1e-4, s
    elif kind == "Project":
        b = iv.subspace
        v = x["blocks.0.hook_resid_post"]
        assert torch.allclose((v @ b.T) @ b, v, atol=1e-4)
    elif kind == "Set":
        assert torch.allclose(x["blocks.0.hook_resid_post"][:, 0], torch.full_like(x["blocks.0.hook_resid_post"][:, 0], 0.5))
        assert torch.allclose(x["blocks.0.hook_resid_post"][:, 1], plain["blocks.0.hook_resid_post"][:, 1].float(),
                              atol=ATOL)
    elif kind == "RowwiseAdd":  # row 0 gets its vector at layer 0, row 1 at layer 1 (and only there)
        shift = x["blocks.1.hook_resid_pre"] - plain["blocks.1.hook_resid_pre"].float()
        assert torch.allclose(shift[1], iv.vectors[1].expand_as(shift[1]), atol=1e-4)
    elif kind == "RowwiseAblate":
        r = iv.directions / iv.directions.norm(dim=-1, keepdim=True)
        for s in ("blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"):
            assert (torch.einsum("bpd,bd->bp", x[s], r)).abs().max() < 1e-4, s
    elif kind == "WeightedAblate":  # weight 1: nothing along r_l is written by attention or the MLP of layer l
        r = iv.directions[1] / iv.directions[1].norm()
        assert (x["blocks.1.hook_attn_out"] @ r).abs().max() < 1e-4
        assert (x["blocks.1.hook_mlp_out"] @ r).abs().max() < 1e-4
    elif kind == "HeadSteering":  # by default at the last token only (positions [-1, -2] read here)
        z, z0 = x["blocks.1.attn.hook_z"], plain["blocks.1.attn.hook_z"].float()
        assert torch.allclose(z[:, 0, 0] - z0[:, 0, 0], (2.0 * iv.directions[0]).expand_as(z[:, 0, 0]), atol=1e-4)
        assert torch.allclose(z[:, 1], z0[:, 1], atol=ATOL)  # the token before: untouched
        assert torch.allclose(z[:, :, 1:], z0[:, :, 1:], atol=ATOL)  # the other heads are untouched


def test_batched_patching_sweep_equals_one_location_per_forward(tiny):
    tokens = make_task("ioi", 4, seed=0, corrupt="swap").tokens(tiny)
    sites = [Site(i, k) for i in range(tiny.n_layers) for k in P.GRIDS.values()]
    runs = P.prepare(tiny, tokens, sites)
    for grid in ("resid", "attn", "mlp", "heads"):
        locs = P.grid_locations(tiny, grid, 4, list(range(tiny.n_layers)))
        batched = P.sweep(tiny, runs, locs, rows_per_forward=8)
        loop = P.sweep(tiny, runs, locs, one_location_per_forward=True)
        assert torch.allclose(batched, loop, atol=1e-4), grid
    assert registered_hooks(tiny) == 0


def test_patching_a_whole_site_restores_the_clean_run(tiny):
    tokens = make_task("ioi", 4, seed=0, corrupt="swap").tokens(tiny)
    site = "blocks.0.hook_resid_pre"
    clean = tiny.pad(tokens.clean)
    with torch.no_grad():
        want = tiny.hf(**clean.inputs(), use_cache=False).logits[:, -1]
        source = tiny.hf(**clean.inputs(), output_hidden_states=True, use_cache=False).hidden_states[0]
        with tiny.intervene(Patch(site, source)):
            got = tiny.hf(**tiny.pad(tokens.corrupted).inputs(), use_cache=False).logits[:, -1]
        with tiny.intervene(SubspacePatch(site, _unit(tiny.d_model, 9, k=tiny.d_model), source)):
            full_basis = tiny.hf(**tiny.pad(tokens.corrupted).inputs(), use_cache=False).logits[:, -1]
    assert torch.allclose(got, want, atol=1e-4) and torch.allclose(full_basis, want, atol=1e-4)


def test_das_keeps_an_orthonormal_basis_and_a_frozen_model(tiny):
    before = _params(tiny)
    fit = das.fit(tiny, make_task("ioi", 8, seed=0, corrupt="swap"), "blocks.1.hook_resid_pre", k=2, epochs=2)
    b = fit.subspace.basis.float()
    assert torch.allclose(b @ b.T, torch.eye(2), atol=1e-4)
    assert all(torch.equal(a, c) for a, c in zip(before, _params(tiny)))
    assert all(not p.requires_grad or p.grad is None for p in tiny.hf.parameters())
    assert registered_hooks(tiny) == 0
