"""The unit tier for the families added to the site table after the first six (issue 18), on tiny random models.

For every family: each site captured through left padding equals the value read by hand from a plain HF forward
(own hooks on the HF modules, the hidden states, the attention weights); the sites mean what TransformerLens means (the residual
identities, W_O z = attn_out, W_out post = mlp_out); ablation removes a direction from the residual stream; greedy
generation equals HF's; the prefix cache changes no number. Sites a family does not have fail in one line.
"""

from __future__ import annotations

import pytest
import torch

import interp
from interp.core.generation import _until_eos
from interp.core.interventions import Ablate, Add
from interp.core.sites import family_for
from interp.errors import InterpError
from tests.conftest import DEVICE, registered_hooks
from tests.tiny import MORE_FAMILIES, tiny_model

pytestmark = pytest.mark.unit

PROMPTS = ["Write a haiku about rain.", "Name three colours of the autumn sky, please."]  # different lengths
POSITIONS = [-1, -2]
ATOL = 1e-5
PARALLEL = {"gpt_neox", "phi", "cohere", "gptj", "falcon"}  # attention and MLP read the block input (tiny configs' defaults)
MOE = {"mixtral", "qwen2_moe", "qwen3_moe"}

# Where each value is read by hand, per module layout: (path inside a decoder layer, "in" or "out").
_LLAMA_LIKE = {"attn": "self_attn", "mlp": "mlp", "o": "self_attn.o_proj", "down": "mlp.down_proj",
               "mid": "post_attention_layernorm", "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}
HAND = {
    **{f: _LLAMA_LIKE for f in ("qwen3", "gemma", "olmo", "stablelm", "mixtral", "qwen2_moe", "qwen3_moe", "cohere",
                                       "granite")},
    "olmo2": {**_LLAMA_LIKE, "attn": "post_attention_layernorm", "mlp": "post_feedforward_layernorm", "mid": "mlp"},
    "starcoder2": {**_LLAMA_LIKE, "down": "mlp.c_proj"},
    "phi3": {**_LLAMA_LIKE, "qkv": None},
    "phi": {**_LLAMA_LIKE, "o": "self_attn.dense", "down": "mlp.fc2"},
    "gpt_neox": {"attn": "attention", "mlp": "mlp", "o": "attention.dense", "down": "mlp.dense_4h_to_h", "qkv": None},
    "falcon": {"attn": "self_attention", "mlp": "mlp", "o": "self_attention.dense", "down": "mlp.dense_4h_to_h",
               "qkv": None},
    "gptj": {"attn": "attn", "mlp": "mlp", "o": "attn.out_proj", "down": "mlp.fc_out",
             "qkv": ("attn.q_proj", "attn.k_proj", "attn.v_proj")},
}


@pytest.fixture(scope="module", params=MORE_FAMILIES)
def tiny(request, tokenizer):
    return tiny_model(request.param, tokenizer, DEVICE)


def _family(model) -> str:
    return model.hf.config.model_type


def _kinds(model) -> list[str]:
    """Every kind of the family's table this model has, but the attention pattern (read with eager attention,
    tested against HF's output_attentions on its own)."""
    fam = model.family
    return [k for k in fam.sites if k != "attn.hook_pattern" and fam.missing(k, model.hf.config) is None]


def _write_scale(model) -> float:
    """Granite multiplies the attention and MLP outputs by residual_multiplier before adding them."""
    return model.hf.config.residual_multiplier if _family(model) == "granite" else 1.0


def _hand_sites(model) -> dict[str, tuple[str, str]]:
    h = HAND[_family(model)]
    out = {"hook_resid_pre": ("", "in"), "hook_resid_post": ("", "out"), "hook_attn_out": (h["attn"], "out"),
           "hook_mlp_out": (h["mlp"], "out"), "attn.hook_z": (h["o"], "in")}
    if _family(model) not in PARALLEL:
        out["hook_resid_mid"] = (h["mid"], "in")
    if _family(model) not in MOE:
        out["mlp.hook_post"] = (h["down"], "in")
    if h["qkv"] is not None:
        out.update({f"attn.hook_{c}": (p, "out") for c, p in zip("qkv", h["qkv"])})
    return out


def _by_hand(model) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """Full [batch, seq, width] values of a plain HF forward of the chat-formatted, left-padded prompts, read with
    own hooks on the HF modules ("blocks.{i}.<kind>" -> tensor), and its hidden states."""
    batch = model.pad(model.encode(model.prepare_prompts(PROMPTS)))
    values: dict[str, torch.Tensor] = {}
    handles = []

    def reader(name: str, where: str):
        if where == "in":
            def pre(module, args, kwargs):
                values[name] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
            return pre

        def post(module, args, output):
            values[name] = (output[0] if isinstance(output, tuple) else output).detach().clone()
        return post

    for i, layer in enumerate(model.layers):
        for kind, (path, where) in _hand_sites(model).items():
            module = layer.get_submodule(path) if path else layer
            fn = reader(f"blocks.{i}.{kind}", where)
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True) if where == "in"
                           else module.register_forward_hook(fn))
    try:
        with torch.no_grad():
            hs = model.hf(**batch.inputs(), output_hidden_states=True, use_cache=False).hidden_states
    finally:
        for h in handles:
            h.remove()
    for name in values:
        if name.endswith(("hook_attn_out", "hook_mlp_out")):
            values[name] = values[name] * _write_scale(model)
    return values, hs


def _at(x: torch.Tensor, model, kind: str) -> torch.Tensor:
    """The hand-read [batch, seq, width] value at POSITIONS, in the capture's layout (heads split)."""
    x = x[:, POSITIONS].float().cpu()
    if kind.startswith("attn.hook_"):
        x = x.view(*x.shape[:-1], -1, model.d_head)
    return x


def test_every_site_equals_the_value_read_by_hand(tiny):
    kinds = _kinds(tiny)
    assert set(kinds) == set(_hand_sites(tiny)), "the table and the hand-read sites list different kinds"
    acts = tiny.capture(PROMPTS, [f"blocks.*.{k}" for k in kinds], positions=POSITIONS)
    values, hs = _by_hand(tiny)
    for i in range(tiny.n_layers):
        for k in kinds:
            got, want = acts[f"blocks.{i}.{k}"].float(), _at(values[f"blocks.{i}.{k}"], tiny, k)
            assert got.shape == want.shape and torch.allclose(got, want, atol=ATOL), (i, k)
        # the residual stream against the hidden states HF reports (the last one is after the final norm)
        assert torch.allclose(acts[f"blocks.{i}.hook_resid_pre"].float(), _at(hs[i], tiny, ""), atol=ATOL), i
        if i + 1 < tiny.n_layers:
            assert torch.allclose(acts[f"blocks.{i}.hook_resid_post"].float(), _at(hs[i + 1], tiny, ""), atol=ATOL), i
    assert registered_hooks(tiny) == 0


def test_the_attention_pattern_equals_hf_attention_weights(tiny):
    if (why := tiny.family.missing("attn.hook_pattern", tiny.hf.config)) is not None:  # Falcon: refused in one line
        with pytest.raises(InterpError, match="not available") as e:
            tiny.capture(PROMPTS, "blocks.0.attn.hook_pattern")
        assert why in str(e.value) and "\n" not in str(e.value)
        return
    acts = tiny.capture(PROMPTS, "blocks.*.attn.hook_pattern", positions=POSITIONS)  # [b, pos, head, key]
    batch = tiny.pad(tiny.encode(tiny.prepare_prompts(PROMPTS)))
    old = tiny.hf.config._attn_implementation
    tiny.hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = tiny.hf(**batch.inputs(), output_attentions=True, use_cache=False).attentions
    finally:
        tiny.hf.set_attn_implementation(old)
    for i, att in enumerate(attentions):  # [b, head, query, key]
        want = att[:, :, POSITIONS].transpose(1, 2).float().cpu()
        got = acts[f"blocks.{i}.attn.hook_pattern"].float()
        assert got.shape == want.shape and torch.allclose(got, want, atol=ATOL), i
    assert registered_hooks(tiny) == 0


def test_the_sites_mean_what_transformer_lens_means(tiny):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out (sequential blocks), or resid_post =
    resid_pre + attn_out + mlp_out (parallel blocks); attn_out is W_O z and mlp_out is W_out post, through the
    output norms where the family has them (OLMo 2) and times Granite's residual_multiplier."""
    kinds = _kinds(tiny)
    acts = tiny.capture(PROMPTS, [f"blocks.*.{k}" for k in kinds], positions=POSITIONS)
    fam, olmo2 = tiny.family, _family(tiny) == "olmo2"
    for i, layer in enumerate(tiny.layers):
        a = {k: acts[f"blocks.{i}.{k}"].float() for k in kinds}
        if "hook_resid_mid" in a:
            assert _family(tiny) not in PARALLEL
            assert torch.allclose(a["hook_resid_mid"], a["hook_resid_pre"] + a["hook_attn_out"], atol=ATOL), i
            assert torch.allclose(a["hook_resid_post"], a["hook_resid_mid"] + a["hook_mlp_out"], atol=ATOL), i
        else:
            assert _family(tiny) in PARALLEL
            total = a["hook_resid_pre"] + a["hook_attn_out"] + a["hook_mlp_out"]
            assert torch.allclose(a["hook_resid_post"], total, atol=ATOL), i
        with torch.no_grad():
            z = a["attn.hook_z"].flatten(-2).to(DEVICE)
            o = layer.get_submodule(fam.o_proj)(z)
            o = (layer.post_attention_layernorm(o) if olmo2 else o) * _write_scale(tiny)
            assert torch.allclose(o.cpu(), a["hook_attn_out"], atol=ATOL), i
            if "mlp.hook_post" in a:
                m = layer.get_submodule(fam.down_proj)(a["mlp.hook_post"].to(DEVICE))
                m = (layer.post_feedforward_layernorm(m) if olmo2 else m) * _write_scale(tiny)
                assert torch.allclose(m.cpu(), a["hook_mlp_out"], atol=ATOL), i


def test_sites_the_family_lacks_fail_in_one_line(tiny):
    family = _family(tiny)
    if family in PARALLEL:
        with pytest.raises(InterpError, match="in parallel .* no resid_mid") as e:
            tiny.capture(PROMPTS, "blocks.0.hook_resid_mid", positions="last")
        assert "\n" not in str(e.value)
    if family in MOE:
        with pytest.raises(InterpError, match="mixture of experts") as e:
            tiny.capture(PROMPTS, "blocks.0.mlp.hook_post", positions="last")
        assert "\n" not in str(e.value)
    assert registered_hooks(tiny) == 0


def test_ablation_leaves_no_component_along_the_direction(tiny):
    u = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(1))
    u = u / u.norm()
    sites = ["blocks.*.hook_resid_pre", "blocks.*.hook_resid_post"]
    plain = tiny.capture(PROMPTS, sites, positions=POSITIONS)
    with tiny.intervene(Ablate(u)):
        acts = tiny.capture(PROMPTS, sites, positions=POSITIONS)
    for i in range(tiny.n_layers):
        for k in ("hook_resid_pre", "hook_resid_post"):
            name = f"blocks.{i}.{k}"
            assert (acts[name].float() @ u).abs().max() < 1e-4, name
            assert (plain[name].float() @ u).abs().max() > 1e-3, name  # there was a component to remove
    assert registered_hooks(tiny) == 0


def test_greedy_generation_equals_hf_greedy_decoding(tiny):
    got = tiny.generate(PROMPTS, max_new_tokens=4)
    batch = tiny.pad(tiny.encode(tiny.prepare_prompts(PROMPTS)))
    eos = tiny.hf.generation_config.eos_token_id
    with torch.no_grad():
        gen = tiny.hf.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=4,
                               do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tiny.pad_id,
                               eos_token_id=eos)
    want = [_until_eos(row.tolist(), eos) for row in gen[:, batch.input_ids.shape[1]:]]
    assert [list(c.ids) for c in got] == want
    assert registered_hooks(tiny) == 0


def test_the_prefix_cache_changes_no_number(tiny):
    sites = [f"blocks.*.{k}" for k in _kinds(tiny)]
    steer = Add(torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0)), layer=1, alpha=3.0)
    plain = tiny.capture(PROMPTS, sites, positions=POSITIONS)
    with tiny.intervene(steer):
        cached = tiny.capture(PROMPTS, sites, positions=POSITIONS, use_prefix_cache=True)
        full = tiny.capture(PROMPTS, sites, positions=POSITIONS, use_prefix_cache=False)
    for s in cached.sites:
        assert torch.allclose(cached[s].float(), full[s].float(), atol=ATOL), s
    assert (full["blocks.1.hook_resid_post"] - plain["blocks.1.hook_resid_post"]).abs().max() > 1e-3
    assert registered_hooks(tiny) == 0


def test_an_unknown_architecture_names_the_supported_families_and_what_to_do():
    with pytest.raises(InterpError, match="no site table") as e:
        family_for("bloom")
    msg = str(e.value)
    assert all(f in msg for f in MORE_FAMILIES) and "FAMILIES in interp/core/sites.py" in msg and "\n" not in msg
    assert all(f in interp.core.sites.FAMILIES for f in MORE_FAMILIES)


@pytest.mark.parametrize("family, parallel", [("gpt_neox", False), ("stablelm", True)])
def test_the_config_flag_decides_whether_a_block_is_parallel(tokenizer, family, parallel):
    """GPT-NeoX and StableLM choose with use_parallel_residual; the tiny configs' defaults are tested above, the
    other setting here."""
    from transformers import AutoModelForCausalLM

    from tests.tiny import config_for

    config = config_for(family, len(tokenizer), tokenizer.pad_token_id)
    config.use_parallel_residual = parallel
    torch.manual_seed(0)
    model = interp.Model(AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(DEVICE), tokenizer,
                         f"tiny-{family}")
    kinds = ["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]
    acts = model.capture(PROMPTS, [f"blocks.*.{k}" for k in kinds], positions=POSITIONS)
    for i in range(model.n_layers):
        pre, attn, mlp, post = (acts[f"blocks.{i}.{k}"].float() for k in kinds)
        if parallel:
            assert torch.allclose(post, pre + attn + mlp, atol=ATOL), i
        else:
            mid = model.capture(PROMPTS, f"blocks.{i}.hook_resid_mid", positions=POSITIONS)[f"blocks.{i}.hook_resid_mid"]
            assert torch.allclose(mid.float(), pre + attn, atol=ATOL) and torch.allclose(post, mid + mlp, atol=ATOL), i
    if parallel:
        with pytest.raises(InterpError, match="in parallel"):
            model.capture(PROMPTS, "blocks.0.hook_resid_mid", positions="last")
    assert registered_hooks(model) == 0


def test_the_orthogonalised_copy_equals_ablation_or_is_refused(tiny):
    """Weight orthogonalisation edits the attention and MLP output projections the table names: the same model as
    the Ablate hooks; refused in one line where it cannot be (OLMo 2's output norms, experts' fused weights)."""
    from interp.core.subspace import Direction
    from interp.steering.orthogonalize import orthogonalized_copy

    d = Direction(torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(1)))
    if _family(tiny) == "olmo2" or _family(tiny) in MOE:
        with pytest.raises(InterpError, match="normalises attention/MLP outputs|mixture of experts") as e:
            orthogonalized_copy(tiny, d)
        assert "\n" not in str(e.value)
        return
    hf = orthogonalized_copy(tiny, d)
    with tiny.intervene(Ablate(d)):
        hooked = tiny.logits(PROMPTS)
    batch = tiny.pad(tiny.encode(tiny.prepare_prompts(PROMPTS)))
    with torch.no_grad():
        edited = hf(**batch.inputs(), use_cache=False).logits[:, -1].float().cpu()
    assert (hooked.float().cpu() - edited).abs().max() <= 1e-4
    assert (hooked.float().cpu() - tiny.logits(PROMPTS).float().cpu()).abs().max() > 1e-3
    assert registered_hooks(tiny) == 0


def test_gradients_at_a_scaled_site_are_the_gradients_of_the_residual_write(tokenizer):
    """Granite's hook_attn_out is residual_multiplier times the attention output: a gradient hook on the site's
    value sees the backward pass, and d(loss)/d(attn_out) = d(loss)/d(resid_mid) since resid_mid = resid_pre +
    attn_out."""
    from interp.core.hooks import hooked
    from interp.core.sites import Site

    model = tiny_model("granite", tokenizer, DEVICE)
    batch = model.pad(model.encode(model.prepare_prompts(PROMPTS)))
    grads: dict[str, torch.Tensor] = {}

    def keep(site, x):
        x.register_hook(lambda g, name=site.kind: grads.__setitem__(name, g.detach().clone()))

    fns = {Site(1, "hook_attn_out"): [keep], Site(1, "hook_resid_mid"): [keep]}
    with torch.enable_grad(), hooked(model, fns):
        embeds = model.hf.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
        out = model.hf(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                       use_cache=False)
        out.logits[:, -1].float().logsumexp(-1).sum().backward()
    assert set(grads) == {"hook_attn_out", "hook_resid_mid"}
    assert torch.allclose(grads["hook_attn_out"], grads["hook_resid_mid"], atol=1e-6)
    assert registered_hooks(model) == 0
