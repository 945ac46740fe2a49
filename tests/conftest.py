"""Shared fixtures: the real bundled models, loaded once per test session (fp32 on the CPU)."""

from __future__ import annotations

import pytest
import torch

import interp

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smol() -> interp.Model:
    return interp.load("smollm2-135m-instruct", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def qwen() -> interp.Model:
    return interp.load("qwen2.5-coder-0.5b-instruct", dtype=torch.float32, device="cpu")


def registered_hooks(model: interp.Model) -> int:
    """How many forward hooks and pre-hooks of ours (defined in interp) are registered anywhere in the model.

    transformers 5 itself keeps output-recording hooks on the layers once `output_hidden_states` or
    `output_attentions` has been asked for; those are not ours and are not counted."""
    return sum(getattr(fn, "__module__", "").startswith("interp.")
               for m in model.hf.modules() for fn in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()])


@pytest.fixture(autouse=True)
def no_hook_left_behind(request):
    """After every test that used a shared model: no hook of ours is left registered on it."""
    yield
    for name in ("smol", "qwen"):
        if name in request.fixturenames:
            model = request.getfixturevalue(name)
            assert registered_hooks(model) == 0, f"{request.node.name} left hooks registered on {name}"
