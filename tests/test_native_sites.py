"""The escape hatch (a site named by its module path, nnsight style) and the load-time checks of the site table.

Native sites are captured and intervened on like canonical ones: `model.layers.1.mlp.down_proj.input` is exactly
`blocks.1.mlp.hook_post`, in capture and under `Set`, `Project` and `Patch`; sites outside the decoder layers read
the whole forward. An unknown architecture fails with the families and the escape hatch in one line, and loads
with family="native"; a known family whose module tree lacks a module of its table fails at load; a missing
optional backend package names its extra.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import interp
from interp.core.activations import Activations
from interp.core.interventions import Patch, Project, Set
from interp.core.sites import FAMILIES
from interp.errors import InterpError
from tests.conftest import DEVICE, registered_hooks
from tests.tiny import config_for, tiny_model

pytestmark = pytest.mark.unit

PROMPTS = ["Write a haiku about rain.", "Name three colours of the autumn sky, please."]
NATIVE = "model.layers.1.mlp.down_proj.input"
CANONICAL = "blocks.1.mlp.hook_post"


@pytest.fixture(scope="module")
def llama(tokenizer) -> interp.Model:
    return tiny_model("llama", tokenizer, DEVICE)


def test_a_native_site_is_the_canonical_site_it_names(llama):
    mlp = "model.layers.0.mlp"
    names = [NATIVE, CANONICAL, f"{mlp}.gate_proj.output", f"{mlp}.up_proj.output", f"{mlp}.act_fn.output",
             "blocks.0.mlp.hook_post"]
    acts = llama.capture(PROMPTS, names, positions="all")
    assert torch.equal(acts[NATIVE], acts[CANONICAL])
    # each native read is that module's own output: act_fn(gate) * up is what down_proj reads
    gate, up, act = (acts[f"{mlp}.{m}.output"] for m in ("gate_proj", "up_proj", "act_fn"))
    assert torch.allclose(act, torch.nn.functional.silu(gate), atol=1e-6)
    assert torch.allclose(act * up, acts["blocks.0.mlp.hook_post"], atol=1e-6)
    assert registered_hooks(llama) == 0


def test_native_sites_outside_the_layers_read_the_whole_forward(llama):
    acts = llama.capture(PROMPTS, ["model.embed_tokens.output", "model.norm.output"], positions="last")
    batch = llama.pad(llama.encode(llama.prepare_prompts(PROMPTS)))
    with torch.no_grad():
        hs = llama.hf(**batch.inputs(), output_hidden_states=True, use_cache=False).hidden_states
    assert torch.allclose(acts["model.embed_tokens.output"], hs[0][:, -1].float().cpu(), atol=1e-6)
    assert torch.allclose(acts["model.norm.output"], hs[-1][:, -1].float().cpu(), atol=1e-6)  # after the final norm
    assert registered_hooks(llama) == 0


def _logits_under(model: interp.Model, edit) -> torch.Tensor:
    with model.intervene(edit):
        return model.logits(PROMPTS, use_prefix_cache=False)


def test_every_site_taking_intervention_accepts_a_native_site(llama):
    width = llama.capture(PROMPTS, CANONICAL)[CANONICAL].shape[-1]
    value = torch.randn(len(PROMPTS), 1, width, generator=torch.Generator().manual_seed(0))
    basis = torch.linalg.qr(torch.randn(width, 3, generator=torch.Generator().manual_seed(1)))[0].T
    source = llama.capture(["A different prompt entirely, of some length."] * 2, CANONICAL, positions=[-1])[CANONICAL]
    plain = llama.logits(PROMPTS, use_prefix_cache=False)
    for make in (lambda s: Set(s, value, positions=[-1]),
                 lambda s: Project(interp.Subspace(basis, provenance={"site": s}), sites=[s]),
                 lambda s: Patch(s, source, positions=[-1])):
        native, canonical = _logits_under(llama, make(NATIVE)), _logits_under(llama, make(CANONICAL))
        assert torch.equal(native, canonical)
        assert (native - plain).abs().max() > 1e-3  # the edit did something
    assert registered_hooks(llama) == 0


def test_native_sites_on_the_other_backends(llama, tokenizer, tmp_path):
    model = tiny_model("llama", tokenizer, DEVICE)
    model.hf.save_pretrained(tmp_path)
    nn = interp.Model(model.hf, tokenizer, "tiny-llama", backend="nnsight", source=str(tmp_path))
    got = nn.capture(PROMPTS, [NATIVE, "model.layers.0.self_attn.o_proj.input", "blocks.0.hook_resid_post"])
    want = llama.capture(PROMPTS, [NATIVE, "blocks.0.attn.hook_z", "blocks.0.hook_resid_post"])
    assert torch.allclose(got[NATIVE], want[NATIVE], atol=1e-5)  # (the hooks backend continues a prefix cache)
    assert torch.allclose(got["model.layers.0.self_attn.o_proj.input"], want["blocks.0.attn.hook_z"].flatten(-2),
                          atol=1e-5)
    other = tiny_model("llama", tokenizer, DEVICE)
    tl = interp.Model(other.hf, tokenizer, "tiny-llama", backend="transformer_lens", source=str(tmp_path))
    with pytest.raises(InterpError, match="TransformerLens hook points, not module paths") as e:
        tl.capture(PROMPTS, NATIVE)
    assert "\n" not in str(e.value)


def test_bad_native_sites_fail_in_one_line(llama):
    for site, match in [("model.layers.0.nope.output", "has no module 'model.layers.0.nope'"),
                        ("model.layers.7.mlp.output", "out of range"),
                        ("model.layers.0.mlp", "unknown site")]:
        with pytest.raises(InterpError, match=match) as e:
            llama.capture(PROMPTS, site)
        assert "\n" not in str(e.value)
    with pytest.raises(InterpError, match=r"\.input or \.output"):
        llama.capture(PROMPTS, "model.layers.0.mlp")


def test_native_activations_save_load_and_stack(llama, tmp_path):
    acts = llama.capture(PROMPTS, [NATIVE, "blocks.0.hook_resid_post"], labels=[1, 0])
    acts.save(tmp_path / "acts")
    back = Activations.load(tmp_path / "acts", model=llama)
    assert torch.equal(back[NATIVE], acts[NATIVE])
    assert back.stack([NATIVE]).shape == (2, 1, acts[NATIVE].shape[-1])
    assert {s.name for s in back.sites} == {NATIVE, "blocks.0.hook_resid_post"}


def test_an_unknown_architecture_names_the_families_and_the_escape_hatch(tokenizer):
    config = config_for("llama", len(tokenizer), tokenizer.pad_token_id)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf.config.model_type = "bloom-like"  # what a family outside the table looks like to the loader
    with pytest.raises(InterpError, match="no site table") as e:
        interp.Model(hf, tokenizer, "unknown")
    msg = str(e.value)
    assert all(f in msg for f in FAMILIES) and "family='native'" in msg and "\n" not in msg
    model = interp.Model(hf, tokenizer, "unknown", family="native")
    got = model.capture(PROMPTS, "model.layers.1.output")
    with torch.no_grad():
        hs = hf(**model.pad(model.encode(model.prepare_prompts(PROMPTS))).inputs(), output_hidden_states=True).hidden_states
    with torch.no_grad():  # HF's last hidden state is after the final norm
        assert torch.allclose(hf.model.norm(got["model.layers.1.output"]), hs[2][:, -1], atol=1e-5)
    first = model.capture(PROMPTS, "model.layers.0.output")["model.layers.0.output"]
    assert torch.allclose(first, hs[1][:, -1], atol=1e-6)
    with pytest.raises(InterpError, match="no site table .*module path") as e:
        model.capture(PROMPTS, "blocks.0.hook_resid_post")
    assert "\n" not in str(e.value)


def test_a_module_tree_that_does_not_match_the_table_fails_at_load(tokenizer):
    config = config_for("llama", len(tokenizer), tokenizer.pad_token_id)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for layer in hf.model.layers:  # what a renamed attribute in a new transformers release looks like
        layer.feed_forward = layer.mlp
        del layer.mlp
    with pytest.raises(InterpError, match="has no module 'model.layers.0.mlp'.*transformers") as e:
        interp.Model(hf, tokenizer, "renamed")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("backend, extra", [("transformer_lens", "transformer-lens"), ("nnsight", "nnsight")])
def test_a_missing_backend_package_names_its_extra(llama, monkeypatch, backend, extra):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == backend else real(name, *a))
    model = interp.Model(llama.hf, llama.tokenizer, "tiny", backend=backend)
    with pytest.raises(InterpError, match=rf"pip install 'interp\[{extra}\]'") as e:
        model.capture(PROMPTS, "blocks.0.hook_resid_post")
    assert "\n" not in str(e.value)
