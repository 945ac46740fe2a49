"""Interventions: they do what they say, on every row, with generate() and the KV cache; weight export."""

from __future__ import annotations

import pytest
import torch

from interp.core.interventions import Ablate, Add, Project, RowwiseAblate, Set
from interp.core.subspace import Direction
from interp.directions.scoring import ablation_scores, addition_scores
from interp.errors import InterpError
from tests.conftest import registered_hooks

PROMPTS = ["How do I bake bread?", "Write a short poem about a cat", "Hi"]


@pytest.fixture(scope="module")
def direction(smol) -> Direction:
    acts = smol.capture(PROMPTS + ["Tell me a joke", "List three colours"], "blocks.12.hook_resid_post")
    x = acts["blocks.12.hook_resid_post"]
    return Direction.from_vector(x[:3].mean(0) - x[3:].mean(0), {"model": smol.fingerprint, "layer": 12})


def test_ablation_removes_the_direction_everywhere(smol, direction):
    with smol.intervene(Ablate(direction)):
        acts = smol.capture(PROMPTS, ["hook_resid_post", "hook_resid_mid"], positions="all")
    for name, x in acts.acts.items():
        assert (x @ direction.vector).abs().max() < 1e-3, name
    clean = smol.capture(PROMPTS, "blocks.12.hook_resid_post")["blocks.12.hook_resid_post"]
    assert (clean @ direction.vector).abs().max() > 0.1  # it was there before


def test_addition_adds_the_vector_at_its_layer_only(smol, direction):
    sites = ["blocks.4.hook_resid_pre", "blocks.3.hook_resid_pre"]
    clean = smol.capture(PROMPTS, sites, positions="all")
    with smol.intervene(Add(direction, layer=4, alpha=2.0)):
        steered = smol.capture(PROMPTS, sites, positions="all")
    mask = clean.mask
    delta = (steered["blocks.4.hook_resid_pre"] - clean["blocks.4.hook_resid_pre"])[mask]
    expected = 2.0 * direction.scale * direction.vector
    assert torch.allclose(delta, expected.expand_as(delta), atol=1e-4)
    assert torch.equal(steered["blocks.3.hook_resid_pre"], clean["blocks.3.hook_resid_pre"])


def test_project_keeps_only_the_subspace(smol, direction):
    with smol.intervene(Project(direction, "blocks.5.hook_resid_post")):
        acts = smol.capture(PROMPTS, "blocks.5.hook_resid_post")
    x = acts["blocks.5.hook_resid_post"]
    assert torch.allclose(x, (x @ direction.vector)[:, None] * direction.vector, atol=1e-4)


def test_set_patches_prompt_positions(smol):
    value = torch.ones(smol.d_model)
    with smol.intervene(Set("blocks.2.hook_resid_post", value, positions=[-1])):
        acts = smol.capture(PROMPTS, "blocks.2.hook_resid_post", positions=[-1, -2])
    x = acts["blocks.2.hook_resid_post"]
    assert torch.allclose(x[:, 0], value.expand(3, -1))
    assert not torch.allclose(x[:, 1], value.expand(3, -1))


def test_set_refuses_positions_counted_from_the_start(smol):
    """Left padding moves the start of a prompt: only "all" or indices from the end mean the same in every row."""
    for positions in ([0], [2, -1], "last"):
        with pytest.raises(InterpError, match="counted from the end"):
            Set("blocks.2.hook_resid_post", torch.ones(smol.d_model), positions=positions)


def test_set_acts_on_the_prompt_not_on_generated_tokens(smol):
    """Every prompt forward (the shared prefix, the rest of the prompt) is set; generation steps are not."""
    from interp.core.hooks import hooked
    from interp.core.sites import Site

    value = torch.full((smol.d_model,), 2.0)
    seen = []
    with smol.intervene(Set("blocks.3.hook_resid_post", value)):
        with hooked(smol, {Site(3, "hook_resid_post"): [lambda s, x: seen.append(x[:, -1].detach().float().cpu())]}):
            smol.generate(PROMPTS[:2], max_new_tokens=3)
    assert len(seen) >= 3
    assert all(torch.allclose(x, value.expand_as(x)) for x in seen[:-2])  # the prompt
    assert not any(torch.allclose(x, value.expand_as(x)) for x in seen[-2:])  # two generation steps


def _greedy_no_cache(model, prompt: str, n: int, interventions) -> str:
    ids = model.encode(model.prepare_prompts([prompt]))[0]
    with model.intervene(*interventions):
        for _ in range(n):
            logits = model.hf(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids


def test_generate_with_kv_cache_matches_a_no_cache_loop_under_intervention(smol, direction):
    ivs = [Add(direction, layer=6, alpha=4.0)]
    n = 8
    batched = smol.generate(PROMPTS, max_new_tokens=n, interventions=ivs)
    eos = smol.hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for prompt, text in zip(PROMPTS, batched):
        ids = _greedy_no_cache(smol, prompt, n, ivs)
        new = ids[len(smol.encode(smol.prepare_prompts([prompt]))[0]):]
        stop = next((i for i, t in enumerate(new) if t in eos), len(new))  # generate stops at end-of-turn
        expected = smol.tokenizer.decode(new[:stop], skip_special_tokens=True).strip()
        assert expected and text == expected, (prompt, text, expected)
    assert registered_hooks(smol) == 0


def test_batched_generation_equals_one_prompt_at_a_time(smol):
    """Left-padded batches give each prompt its own greedy answer: real answers, not empty or shared ones."""
    batched = smol.generate(PROMPTS, max_new_tokens=10)
    single = [smol.generate([p], max_new_tokens=10)[0] for p in PROMPTS]
    assert batched == single
    assert smol.generate(PROMPTS, max_new_tokens=10, batch_size=2) == single
    assert all(len(smol.tokenizer(t, add_special_tokens=False).input_ids) >= 5 for t in single), single
    assert len(set(single)) == len(PROMPTS)
    first = smol.logits(PROMPTS).argmax(-1)  # each answer opens with the model's own next token for its prompt
    for text, token in zip(single, first.tolist()):
        assert text.startswith(smol.tokenizer.decode([token]).strip()), (text, token)


def test_rowwise_ablate_equals_ablate(smol, direction):
    with smol.intervene(Ablate(direction)):
        ref = smol.logits(PROMPTS)
    with smol.intervene(RowwiseAblate(direction.vector.expand(3, -1))):
        got = smol.logits(PROMPTS)
    assert (ref - got).abs().max() < 1e-4


def test_batched_candidate_scoring_equals_the_loop(smol, direction):
    ids = smol.encode(smol.prepare_prompts(PROMPTS))
    dirs = torch.stack([direction.vector, torch.randn(smol.d_model), torch.randn(smol.d_model)])
    reduce = lambda logits, prompt: logits.log_softmax(-1)[:, 42]
    batched = ablation_scores(smol, ids, dirs, reduce, rows_per_forward=9)
    loop = ablation_scores(smol, ids, dirs, reduce, rows_per_forward=9, one_candidate_per_forward=True)
    assert (batched - loop).abs().max() < 1e-3
    add_b = addition_scores(smol, ids, dirs * 3, [2, 5, 9], reduce, rows_per_forward=9)
    add_l = addition_scores(smol, ids, dirs * 3, [2, 5, 9], reduce, one_candidate_per_forward=True)
    assert (add_b - add_l).abs().max() < 1e-3
    with smol.intervene(Add(dirs[1] * 3, layer=5)):
        ref = reduce(smol.logits(PROMPTS), None)
    assert (add_b[1] - ref).abs().max() < 1e-3


def test_orthogonalized_checkpoint_matches_hook_ablation(smol, direction, tmp_path):
    from transformers import AutoModelForCausalLM

    from interp.steering.orthogonalize import export_orthogonalized

    before = {k: v.clone() for k, v in list(smol.hf.state_dict().items())[:5]}
    export_orthogonalized(smol, direction, tmp_path / "ortho")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ortho"), dtype=smol.dtype).to(smol.device)
    batch = smol.tokenize(smol.prepare_prompts(PROMPTS))
    with smol.intervene(Ablate(direction)):
        hooked = smol.hf(**batch.inputs()).logits
    edited = plain(**batch.inputs()).logits
    mask = batch.attention_mask.bool()
    assert (hooked[mask] - edited[mask]).abs().max() < 1e-2
    assert (hooked[mask].argmax(-1) == edited[mask].argmax(-1)).float().mean() > 0.99
    for k, v in before.items():  # the loaded model was not touched
        assert torch.equal(smol.hf.state_dict()[k], v)


def test_bad_directions_are_refused(smol):
    with pytest.raises(InterpError, match="width"):
        with smol.intervene(Ablate(torch.randn(smol.d_model + 1))):
            pass
    with pytest.raises(InterpError, match="NaN"):
        with smol.intervene(Add(torch.full((smol.d_model,), float("nan")), layer=1)):
            pass
    with pytest.raises(InterpError, match="out of range"):
        with smol.intervene(Add(torch.randn(smol.d_model), layer=99)):
            pass
    other = Direction.from_vector(torch.randn(smol.d_model), {"model": {**smol.fingerprint, "name": "another-model"}})
    with pytest.raises(InterpError, match="another model"):
        with smol.intervene(Ablate(other)):
            pass
    assert registered_hooks(smol) == 0
