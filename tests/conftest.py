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
    """How many forward hooks and pre-hooks are registered anywhere in the model."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())
