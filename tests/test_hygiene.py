"""Hooks are always removed and the model is never changed, also when the body raises."""

from __future__ import annotations

import pytest
import torch

from interp.core.interventions import Ablate, Add
from tests.conftest import registered_hooks

PROMPTS = ["How do I bake bread?", "Write a poem"]


class Boom(Exception):
    pass


def test_exception_inside_intervention_leaves_model_clean(smol):
    clean = smol.logits(PROMPTS)
    direction = torch.randn(smol.d_model)
    with pytest.raises(Boom):
        with smol.intervene(Ablate(direction), Add(direction, layer=3, alpha=8.0)):
            steered = smol.logits(PROMPTS)
            assert not torch.equal(steered, clean)
            raise Boom
    assert registered_hooks(smol) == 0
    assert torch.equal(smol.logits(PROMPTS), clean)


def test_exception_inside_capture_leaves_model_clean(smol, monkeypatch):
    clean = smol.logits(PROMPTS)

    def broken(*args, **kwargs):
        raise Boom

    monkeypatch.setattr("interp.core.capture.select", broken)
    with pytest.raises(Boom):
        smol.capture(PROMPTS, "hook_resid_post")
    assert registered_hooks(smol) == 0
    assert torch.equal(smol.logits(PROMPTS), clean)


def test_intervention_touches_every_row(smol):
    """Addition changes every batch row, not only row 0 (the transformers-5 `output[0]` trap)."""
    direction = torch.randn(smol.d_model)
    clean = smol.logits(PROMPTS)
    with smol.intervene(Add(direction, layer=2, alpha=10.0)):
        steered = smol.logits(PROMPTS)
    assert ((steered - clean).abs().amax(-1) > 1e-2).all()
