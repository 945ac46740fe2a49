"""Capture: left padding, positions, early stop, Activations persistence."""

from __future__ import annotations

import pytest
import torch

from interp.core.activations import Activations

MIXED = ["Hi", "How do I bake sourdough bread at home with a cast iron pot?", "Name three primes.",
         "Write a haiku about the sea and the wind in autumn evenings"]


def test_resid_post_matches_hidden_states(smol):
    acts = smol.capture(MIXED, "hook_resid_post", positions="all")
    tb = smol.tokenize(smol.prepare_prompts(MIXED))
    with torch.no_grad():
        hs = [h.float().cpu() for h in smol.hf(**tb.inputs(), output_hidden_states=True).hidden_states]  # where acts land
        last = acts[f"blocks.{smol.n_layers - 1}.hook_resid_post"]
        last = smol.hf.model.norm(last.to(smol.device, smol.dtype)).float().cpu()  # HF's last hidden state is normed
    mask = tb.attention_mask.bool().cpu()
    for layer in range(smol.n_layers - 1):
        got = acts[f"blocks.{layer}.hook_resid_post"]
        assert (got[mask] - hs[layer + 1][mask]).abs().max() <= 1e-4
    assert (last[mask] - hs[-1][mask]).abs().max() <= 1e-4


@pytest.mark.parametrize("positions", ["last", "eoi", "mean", "all", [-1, -3]])
def test_batched_left_padding_equals_one_at_a_time(qwen, positions):
    sites = ["blocks.3.hook_resid_post", "blocks.10.hook_mlp_out", "blocks.10.attn.hook_z"]
    batched = qwen.capture(MIXED, sites, positions=positions, batch_size=4)
    for i, prompt in enumerate(MIXED):
        single = qwen.capture([prompt], sites, positions=positions, batch_size=1)
        for s in sites:
            a, b = batched[s][i], single[s][0]
            if positions == "all":  # batched rows carry left padding; compare the real tokens
                a = a[batched.mask[i]]
                b = b[single.mask[0]]
            assert a.shape == b.shape
            # fp32 rounding grows with the value: Qwen's first-token residual norms are in the thousands
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m: f"{s} {positions}: {m}")


def test_positions_shapes_and_eoi(smol):
    acts = smol.capture(MIXED[:2], ["blocks.2.hook_resid_post", "blocks.2.attn.hook_z", "blocks.1.attn.hook_pattern"],
                        positions="eoi")
    n_eoi = smol.n_eoi
    assert acts["blocks.2.hook_resid_post"].shape == (2, n_eoi, smol.d_model)
    assert acts["blocks.2.attn.hook_z"].shape == (2, n_eoi, smol.n_heads, smol.d_head)
    pattern = acts["blocks.1.attn.hook_pattern"]
    assert pattern.shape[:3] == (2, n_eoi, smol.n_heads)
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-4)  # attention rows sum to one
    assert acts.position_tokens == smol.eoi_tokens()
    # the end-of-instruction tokens are the very last tokens of every chat-formatted prompt
    ids = smol.encode(smol.prepare_prompts(MIXED[:2]))
    assert all(row[-n_eoi:] == smol.eoi_ids for row in ids)


def test_early_stop_skips_deeper_layers(smol):
    calls = []
    handle = smol.layers[5].register_forward_hook(lambda *a: calls.append(1))
    try:
        smol.capture(["Hi"], "blocks.3.hook_resid_post")
    finally:
        handle.remove()
    assert calls == []


def test_activations_roundtrip_and_slicing(smol, tmp_path):
    acts = smol.capture(MIXED, ["blocks.0.hook_resid_post", "blocks.4.hook_resid_post"], labels=["a", "b", "a", "b"])
    acts.save(tmp_path / "acts")
    back = Activations.load(tmp_path / "acts", model=smol)
    assert back.prompts == MIXED and back.labels == acts.labels
    assert torch.equal(back["blocks.4.hook_resid_post"], acts["blocks.4.hook_resid_post"])
    assert back.stack().shape == (4, 2, smol.d_model)
    assert back.where("a").prompts == [MIXED[0], MIXED[2]]
    assert list(back.layer(4).acts) == ["blocks.4.hook_resid_post"]


@pytest.mark.parametrize("positions", ["last", "eoi", [-2]])
def test_shared_prefix_cache_equals_the_full_forward(qwen, positions):
    """The chat template's shared system prompt runs once; the captured values do not change."""
    from interp.core.prefix import common_prefix_length

    ids = qwen.encode(qwen.prepare_prompts(MIXED))
    assert common_prefix_length(ids) >= 10  # Qwen's default system prompt is shared
    sites = ["blocks.2.hook_resid_post", "blocks.9.attn.hook_z", "blocks.9.hook_resid_pre"]
    cached = qwen.capture(MIXED, sites, positions=positions, batch_size=3, use_prefix_cache=True)
    full = qwen.capture(MIXED, sites, positions=positions, batch_size=3, use_prefix_cache=False)
    for s in sites:
        assert (cached[s] - full[s]).abs().max() <= 1e-4, s


def test_shared_prefix_cache_is_float_noise_at_every_layer(smol):
    """Deep SmolLM2 layers carry values of several hundred, where a different summation order moves fp32 by
    ~1e-4 in absolute terms: the cached path must agree to ~1e-6 relative."""
    cached = smol.capture(MIXED, "hook_resid_post", use_prefix_cache=True)
    full = smol.capture(MIXED, "hook_resid_post", use_prefix_cache=False)
    for s, x in full.acts.items():
        rel = ((cached[s] - x).norm(dim=-1) / x.norm(dim=-1)).max()
        assert rel <= 1e-5, (s, float(rel))
