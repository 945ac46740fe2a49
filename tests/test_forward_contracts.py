"""Contracts of every forward, on a tiny randomly initialised Llama built here (unit tier): the prefix cache
decides exactness from the kinds of edit it knows, a hook that never fired fails loudly (also when none fired),
and scores on the model's own completions read the generated ids, not a re-tokenisation of the text."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import interp
from interp.core.interventions import Add, Set
from interp.core.prefix import UNKNOWN, rule
from interp.directions.scoring import reference_completions
from interp.errors import InterpError
from tests.conftest import DEVICE, registered_hooks
from tests.tiny import tiny_model

PROMPTS = ["Write a haiku about rain.", "Write a haiku about snow."]


@pytest.fixture(scope="module")
def tiny(tokenizer) -> interp.Model:
    return tiny_model("llama", tokenizer, DEVICE)


def test_set_with_one_value_per_position_under_the_prefix_cache(tiny):
    """`Set(site, value=[k, d], positions="all")` writes a different value at every position: the prefix cache
    cannot split it, so capture and logits with the cache asked for equal the full forward (today's code skipped
    it in the prefix pass and handed the suffix forward a value of the wrong width)."""
    ids = tiny.encode(tiny.prepare_prompts(PROMPTS))
    assert len({len(r) for r in ids}) == 1  # one width, so [k, d] fits every prompt at "all"
    k = len(ids[0])
    value = torch.randn(k, tiny.d_model, generator=torch.Generator().manual_seed(1))
    edit = Set("blocks.0.hook_resid_post", value, positions="all")
    assert rule(edit).tail is None
    with tiny.intervene(edit):
        cached = tiny.capture(PROMPTS, "blocks.1.hook_resid_post", positions="last", use_prefix_cache=True)
        full = tiny.capture(PROMPTS, "blocks.1.hook_resid_post", positions="last", use_prefix_cache=False)
        logits_cached = tiny.logits(PROMPTS, use_prefix_cache=True)
        logits_full = tiny.logits(PROMPTS, use_prefix_cache=False)
    torch.testing.assert_close(cached["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"])
    torch.testing.assert_close(logits_cached, logits_full)
    with torch.no_grad():
        plain = tiny.logits(PROMPTS, use_prefix_cache=False)
    assert (plain - logits_full).abs().max() > 1e-3  # the Set did act


def test_prefix_rule_is_decided_from_known_kinds(tiny):
    v = torch.ones(tiny.d_model)
    assert rule(Add(v, layer=0)).in_prefix
    assert rule(Set("blocks.0.hook_resid_post", v)).in_prefix  # one value everywhere
    assert rule(Set("blocks.0.hook_resid_post", v, positions=[-2])).tail == 2

    class Mine:  # an intervention the prefix cache does not know, whatever it says of itself
        position_dependent = False
        row_dependent = False

        def hooks(self, model):
            return {}

    assert rule(Mine()) is UNKNOWN


def test_a_block_in_which_no_hook_fires_fails_loudly(tiny, monkeypatch):
    """An intervention whose hook sits on a module the forward never calls did nothing: the block raises,
    although no hook at all fired (today's check ran only when some hook had fired)."""
    unused = nn.Identity()
    monkeypatch.setattr(tiny, "site_module", lambda site: (unused, "out"))
    with pytest.raises(InterpError, match="never fired"):
        with tiny.intervene(Add(torch.ones(tiny.d_model), layer=1)):
            tiny.logits(PROMPTS[:1])
    assert registered_hooks(tiny) == 0


def test_a_forward_stopped_before_the_hook_layer_is_not_an_error(tiny):
    """Capture stops after the deepest layer it reads: a hook deeper than that legitimately never runs."""
    with tiny.intervene(Add(torch.ones(tiny.d_model), layer=1)):
        tiny.capture(PROMPTS, "blocks.0.hook_resid_post")


def test_capability_cost_scores_the_generated_ids(tiny):
    """The reference completions are the ids the model generated. On a random model they include tokens whose
    decoded, stripped text re-tokenises to other ids, which today's code scored instead."""
    prompts = [f"Tell me about item {i}." for i in range(6)]
    generated = tiny.generate(prompts, max_new_tokens=8)
    ref = reference_completions(tiny, prompts, n_tokens=8)
    eos = tiny.tokenizer.eos_token_id
    assert ref.completion_ids == [list(g.ids) or [eos] for g in generated]
    retokenised = [tiny.tokenizer(str(g), add_special_tokens=False).input_ids[:8] or [eos] for g in generated]
    assert retokenised != ref.completion_ids  # the premise: the two differ on at least one completion
    for g in generated:
        assert str(g) == tiny.tokenizer.decode(list(g.ids), skip_special_tokens=True).strip()


@pytest.mark.integration  # loads the bundled SmolLM2
def test_loading_leaves_hf_progress_bars_as_they_were():
    """`interp.load` silences transformers' progress bars for the load only, not for the whole process."""
    from transformers.utils import logging as hf_logging

    from tests.conftest import load

    hf_logging.enable_progress_bar()
    load("smollm2-135m-instruct")
    assert hf_logging.is_progress_bar_enabled()
