"""Run a prefix shared by every prompt once, and reuse its keys and values for each batch.

Chat templates put the same tokens (system prompt, user header) before every instruction: on Qwen2.5 about
half of a short prompt. `SharedPrefix` runs those tokens once and hands each batch a cache that covers them,
so a batch only runs its own tokens. The batch's attention mask covers prefix + suffix, and position ids
continue after the prefix, so the activations equal those of the full forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from interp.hooks import hooked

if TYPE_CHECKING:
    from interp.model import Model, TokenBatch


def common_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    first, n = ids[0], min(len(r) for r in ids)
    for i in range(n):
        if any(r[i] != first[i] for r in ids):
            return i
    return n


@dataclass
class SharedPrefix:
    """Keys and values of a prefix, per layer [rows, heads, length, d_head]: one row when every prompt shares
    it as is, or one row per candidate when each candidate intervention changes the prefix differently."""

    length: int
    kv: list[tuple[Tensor, Tensor]]

    @classmethod
    @torch.no_grad()
    def compute(cls, model: "Model", prefix: Sequence[int], stop_layer: int | None = None, rows: int = 1) -> "SharedPrefix":
        """Run `rows` copies of `prefix` once (under whatever interventions the caller has active), stopping
        after `stop_layer` when later layers are never needed."""
        cache = DynamicCache(config=model.hf.config)
        batch = model.pad([list(prefix)] * rows)
        with hooked(model, {}, stop_after=stop_layer):
            model.hf(**batch.inputs(), past_key_values=cache, use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in cache.layers if getattr(layer, "keys", None) is not None
              and layer.keys.numel()]
        return cls(len(prefix), kv)

    @classmethod
    def cat(cls, parts: Sequence["SharedPrefix"]) -> "SharedPrefix":
        """Stack the rows of several computations of the same prefix."""
        kv = [(torch.cat([p.kv[i][0] for p in parts]), torch.cat([p.kv[i][1] for p in parts])) for i in range(len(parts[0].kv))]
        return cls(parts[0].length, kv)

    def inputs(self, suffix: "TokenBatch", rows: Tensor | None = None) -> dict[str, Tensor]:
        """Model inputs for a left-padded batch of suffixes that follow this prefix; `rows` picks, for each
        batch row, which prefix row it continues (default: the single shared one)."""
        b = suffix.input_ids.shape[0]
        if rows is None:
            layers = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in self.kv]
        else:
            idx = rows.to(self.kv[0][0].device)
            layers = [(k[idx], v[idx]) for k, v in self.kv]
        ones = torch.ones(b, self.length, dtype=suffix.attention_mask.dtype, device=suffix.attention_mask.device)
        return {
            "input_ids": suffix.input_ids,
            "attention_mask": torch.cat([ones, suffix.attention_mask], 1),
            "position_ids": suffix.position_ids + self.length,
            "past_key_values": DynamicCache(ddp_cache_data=layers),
            "use_cache": True,
        }
