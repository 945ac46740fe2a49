"""The core effects, on the real refusing model (Qwen2.5-Coder-0.5B-Instruct) with a handful of bundled prompts.

A refusal direction (difference in means at layer 15's resid_pre, last prompt token: the site `refusal.run`
picks on this model with 64 + 64 prompts, see the README) fitted on 16 + 16 training prompts must be causal:

- ablating it lowers the first-token refusal score of held-out prompts the model refuses, below zero;
- adding it raises the score of held-out harmless prompts;

and probe-SSR must move a refused prompt's activation across a linear probe's decision boundary, checked
by capturing the attacked prompt afresh (not by trusting the attack's own loss).

The refusal score is Arditi et al.'s log-odds of the refusal tokens; "I" (Qwen's "I'm sorry, ...") is the
token `RefusalScore.fit` estimates on this model (tests/test_judges.py measures that), set here to save the
generations. The model, direction, score and refused prompts are session fixtures (tests/conftest.py), shared
with the CLI's steer test. About 40 s on two CPU cores.
"""

from __future__ import annotations

import torch

import interp
from interp.attacks import EngineConfig, ProbeLoss, TokenSearch, build_prompt
from interp.data.prompts import dataset
from probes import LinearProbes
from tests.conftest import QWEN_PROBE_LAYER, QWEN_REFUSAL_LAYER

ADD_ALPHA = 2.0  # twice the mean difference: the strength refusal.run calibrates on this model (README)
PROBE_SITE = f"blocks.{QWEN_PROBE_LAYER}.hook_resid_post"


def test_ablating_the_refusal_direction_lowers_the_refusal_score_of_refused_prompts(
        qwen, qwen_refusal_direction, qwen_refusal_score, qwen_refused):
    prompts, before = qwen_refused
    with qwen.intervene(interp.Ablate(qwen_refusal_direction)):
        after = qwen_refusal_score.score(qwen, prompts)
    assert (after < before).all(), (before, after)
    assert (after < 0).all(), after  # every one of them now more likely complies than refuses
    assert (before - after).mean() > 1.0, (before, after)


def test_adding_the_refusal_direction_raises_the_refusal_score_of_harmless_prompts(
        qwen, qwen_refusal_direction, qwen_refusal_score):
    harmless = dataset("harmless_val", n=6)
    before = qwen_refusal_score.score(qwen, harmless)
    with qwen.intervene(interp.Add(qwen_refusal_direction, layer=QWEN_REFUSAL_LAYER, alpha=ADD_ALPHA)):
        after = qwen_refusal_score.score(qwen, harmless)
    assert (after > before).all(), (before, after)
    assert (after - before).mean() > 1.0, (before, after)
    # and not by accident: a random vector of the same norm does much less
    noise = torch.randn(qwen.d_model, generator=torch.Generator().manual_seed(0))
    noise = noise / noise.norm() * qwen_refusal_direction.scale * ADD_ALPHA
    with qwen.intervene(interp.Add(noise, layer=QWEN_REFUSAL_LAYER)):
        random = qwen_refusal_score.score(qwen, harmless)
    assert (random - before).mean() < 0.5 * (after - before).mean(), (before, after, random)


def test_ssr_moves_a_refused_prompt_across_the_probe_boundary(qwen, qwen_train, qwen_refused):
    X, y = qwen_train[PROBE_SITE][:, None], qwen_train.labels  # one probe, at QWEN_PROBE_LAYER: [n, 1, d]
    probe = LinearProbes(provenance={"model": qwen.fingerprint, "layers": [QWEN_PROBE_LAYER]}).fit(X, y)

    def probe_score(text: str) -> float:
        """> 0: the harmful side of the boundary; read by a fresh capture of the chat-formatted prompt."""
        acts = qwen.capture([text], PROBE_SITE, positions="last")
        return probe.decision_function(acts[PROBE_SITE][:, None]).item()

    behavior = qwen_refused[0][0]
    assert probe_score(behavior) > 0  # the refused prompt starts on the harmful side
    prompt = build_prompt(qwen, "{behavior}" + "[MASK]" * 6, behavior)
    loss = ProbeLoss.from_probes(probe, qwen, [QWEN_PROBE_LAYER])
    (result,) = TokenSearch(qwen, loss, EngineConfig(steps=15, candidates=32)).run([prompt], progress=False)
    assert result.text.startswith(behavior) and result.text != behavior
    assert result.loss < result.initial_loss
    assert probe_score(result.text) < 0, result  # across the boundary: the probe now reads it as harmless
