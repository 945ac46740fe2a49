"""Cross-backend verification (`interp.verify`) and a model dispatched over devices by accelerate (unit tier).

Verification reruns captures and logits on the other two backends and records the largest disagreement: tiny
on agreeing backends, large where a site table is wrong (TransformerLens reads its own hook points), and in the
Result of an analysis. A model split by `device_map` (part of it offloaded to disk, the CPU-only stand-in for a
second device) gives the same captures, logits, interventions and generations as the same model in one piece.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import interp
from analyses import separation
from interp.core.interventions import Ablate, Add
from interp.errors import InterpError
from tests.conftest import registered_hooks
from tests.tiny import tiny_model

pytestmark = pytest.mark.unit

PROMPTS = ["Write a haiku about rain.", "Name three colours of the autumn sky, please.", "Hi", "Count to five."]
KINDS = ["hook_resid_pre", "hook_resid_mid", "hook_attn_out", "hook_mlp_out", "hook_resid_post", "attn.hook_z",
         "mlp.hook_post"]


@pytest.fixture(scope="module")
def folder(tokenizer, tmp_path_factory):
    """A tiny Llama saved with its tokenizer (TransformerLens and accelerate read it from disk)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", tokenizer).hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(folder):
    return interp.load(str(folder), device="cpu", dtype="float32")


def test_verification_agrees_where_the_backends_agree(model):
    u = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    with interp.verifying(model) as check:
        model.capture(PROMPTS, [f"blocks.*.{k}" for k in KINDS], positions="all")
        with model.intervene(Add(u, layer=1, alpha=3.0)):
            model.capture(PROMPTS, "blocks.*.hook_resid_post", positions=[-1, -2])
            model.logits(PROMPTS)
    assert check.others == ("transformer_lens", "nnsight")
    assert check.compared == {"transformer_lens": 3, "nnsight": 3} and check.refused == {}
    assert all(d <= 1e-4 for d in check.max_abs_diff.values()), check.max_abs_diff
    assert model.run_context.verifier is None and registered_hooks(model) == 0


def test_verification_catches_a_wrong_site_table(folder):
    """A table that reads resid_mid after the attention norm instead of before it: TransformerLens, which reads its
    own hook point, disagrees; the nnsight twin, which shares the table, does not."""
    right = interp.load(str(folder), device="cpu", dtype="float32")
    sites = {**right.family.sites, "hook_resid_mid": ("post_attention_layernorm", "out")}
    wrong = interp.load(str(folder), device="cpu", dtype="float32",
                        family=dataclasses.replace(right.family, sites=sites))
    with interp.verifying(wrong) as check:
        wrong.capture(PROMPTS, ["blocks.0.hook_resid_mid", "blocks.0.hook_resid_post"])
    assert check.max_abs_diff["transformer_lens"] > 0.1 and check.where["transformer_lens"] == "blocks.0.hook_resid_mid"
    assert check.max_abs_diff["nnsight"] <= 1e-5


def test_a_refusing_backend_is_recorded_not_fatal(model):
    u = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    with interp.verifying(model) as check, model.intervene(Ablate(u)):
        acts = model.capture(PROMPTS, "blocks.0.hook_attn_out")
    assert (acts["blocks.0.hook_attn_out"] @ (u / u.norm())).abs().max() < 1e-4
    assert check.compared == {"transformer_lens": 1} and "cannot capture" in check.refused["nnsight"][0]


def test_an_analysis_verifies_itself_into_its_result(model, tmp_path):
    data = separation.SeparationData(PROMPTS[:2] * 3, PROMPTS[2:] * 3)
    result = interp.verify(model, lambda: separation.run(model, data, separation.SeparationConfig(batch_size=4)))
    check = result.full_summary()["backend_check"]
    assert set(check["max_abs_diff"]) == {"transformer_lens", "nnsight"} and max(check["max_abs_diff"].values()) <= 1e-4
    result.save(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "result.json").read_text())["backend_check"] == check
    with pytest.raises(InterpError, match="other than the model's own"):
        with interp.verifying(model, ["hooks"]):
            pass


def test_a_model_split_over_devices_equals_the_model_in_one_piece(folder, model, tmp_path):
    """Layer 1 and the unembedding offloaded to disk (accelerate's hooks load them for each forward): the
    CPU-only stand-in for a model spread over two GPUs."""
    placement = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                 "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "disk"}
    split = interp.load(str(folder), dtype="float32", device_map=placement, offload_folder=str(tmp_path / "offload"))
    assert split.device == torch.device("cpu")
    assert any(hasattr(m, "_hf_hook") for m in split.hf.modules())  # accelerate dispatched it
    sites = [f"blocks.*.{k}" for k in KINDS]
    a, b = split.capture(PROMPTS, sites, positions="all"), model.capture(PROMPTS, sites, positions="all")
    for s in b.acts:
        assert a[s].device.type == "cpu" and torch.allclose(a[s], b[s], atol=1e-6), s
    assert torch.allclose(split.logits(PROMPTS), model.logits(PROMPTS), atol=1e-5)
    u = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    with split.intervene(Ablate(u)):
        a = split.capture(PROMPTS, "blocks.*.hook_resid_post")
    with model.intervene(Ablate(u)):
        b = model.capture(PROMPTS, "blocks.*.hook_resid_post")
    for s in b.acts:
        assert torch.allclose(a[s], b[s], atol=1e-6), s
    steer = Add(u, layer=1, alpha=4.0)
    for edits in ([], [steer]):
        got = [list(c.ids) for c in split.generate(PROMPTS, max_new_tokens=4, interventions=edits)]
        want = [list(c.ids) for c in model.generate(PROMPTS, max_new_tokens=4, interventions=edits)]
        assert got == want
    assert registered_hooks(split) == 0
