"""Loading: bundled names, a .gguf file (converted once into the cache), local folders, defaults."""

from __future__ import annotations

import time

import torch

import interp
from interp.data.registry import chunk_paths, get_bundled, model_dir
from tests.conftest import DEVICE, DTYPE, tol


def test_gguf_file_loads_like_the_bundled_model(smol):
    (gguf,) = chunk_paths(get_bundled("smollm2-135m-instruct"))
    m = interp.load(str(gguf), dtype=DTYPE, device=DEVICE)
    prompts = ["Name a colour"]
    assert torch.allclose(m.logits(prompts), smol.logits(prompts), atol=tol(DTYPE))
    start = time.perf_counter()
    again = interp.load(str(gguf), dtype=DTYPE, device=DEVICE)  # the converted folder is cached: no second conversion
    assert time.perf_counter() - start < 30
    assert again.d_model == smol.d_model


def test_local_folder_and_defaults(smol):
    m = interp.load(model_dir("smollm2-135m-instruct"))
    gpu = torch.cuda.is_available()  # the library's defaults: bf16 on a GPU, fp32 on the CPU
    assert m.device.type == ("cuda" if gpu else "cpu") and m.dtype == (torch.bfloat16 if gpu else torch.float32)
    assert m.n_layers == 30 and m.eoi_ids == smol.eoi_ids
    text = m.format_chat("Hello", system="Be brief.")
    assert "Be brief." in text and text.index("Be brief.") < text.index("Hello")
