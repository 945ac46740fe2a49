"""Tiny randomly initialised models of several HF families, built in the test process in well under a second.

The unit tier runs on these: 2 layers, d_model 64, 4 heads, the real SmolLM2 tokenizer (its vocabulary and chat
template), fp32 on the test device. Random weights make every component matter, so an edit that reaches the
wrong place shows up as a numeric difference.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

import interp

FAMILIES = ("llama", "qwen2", "mistral", "gemma2", "gpt2")
# Families added to the site table later (tests/test_families.py), in the order of issue 18.
MORE_FAMILIES = ("qwen3", "gemma", "olmo", "olmo2", "stablelm", "starcoder2", "mixtral", "qwen2_moe", "qwen3_moe",
                 "granite", "gpt_neox", "phi", "phi3", "cohere", "gptj", "falcon")
D_MODEL, N_LAYERS, N_HEADS = 64, 2, 4


def config_for(family: str, vocab_size: int, pad_token_id: int | None) -> PretrainedConfig:
    """A 2-layer, d_model-64 config of `family` (grouped-query attention where the family has it)."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, pad_token_id=pad_token_id)
    if family == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=512,
                                    **common)
    if family == "gptj":
        return AutoConfig.for_model("gptj", n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=512,
                                    rotary_dim=8, **common)
    if family == "falcon":  # parallel attention and MLP, rotary, multi-query attention (its defaults)
        return AutoConfig.for_model("falcon", hidden_size=D_MODEL, num_hidden_layers=N_LAYERS,
                                    num_attention_heads=N_HEADS, **common)
    extra: dict = dict(head_dim=D_MODEL // N_HEADS) if family.startswith("gemma") or family in MORE_FAMILIES else {}
    if family in ("qwen2_moe", "qwen3_moe"):  # a few small experts (the defaults are large)
        extra.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=D_MODEL // 2,
                     shared_expert_intermediate_size=D_MODEL)
    elif family == "mixtral":
        extra.update(num_local_experts=4, num_experts_per_tok=2)
    elif family == "granite":  # the multipliers away from 1, so a site that ignores one shows up
        extra.update(residual_multiplier=0.5, embedding_multiplier=2.0, attention_multiplier=0.3, logits_scaling=2.0)
    if family != "gpt_neox":  # GPT-NeoX has no grouped-query attention (TransformerLens would read the field)
        extra["num_key_value_heads"] = 2
    return AutoConfig.for_model(family, hidden_size=D_MODEL, intermediate_size=2 * D_MODEL,
                                num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                                max_position_embeddings=512, **extra, **common)


def tiny_model(family: str, tokenizer, device: torch.device | str = "cpu", seed: int = 0) -> interp.Model:
    """A fresh random `interp.Model` of `family` with `tokenizer`, in fp32, in eval mode."""
    config = config_for(family, len(tokenizer), tokenizer.pad_token_id)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    return interp.Model(hf, tokenizer, f"tiny-{family}")
