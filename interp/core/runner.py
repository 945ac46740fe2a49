"""The one forward: `forward(model, batch, ...)` is how every analysis runs the HF model with hooks.

It owns what each forward needs and each hand-written copy used to rebuild: the inputs of a left-padded batch
(position ids that count real tokens only), continuing a prefix KV cache (`interp.core.prefix.PrefixKV`), hook
registration and removal (`interp.core.hooks.hooked`), interventions applied for this forward only (`edits`, on top of
any `model.intervene` block), stopping after the deepest layer needed, `logits_to_keep`, eager attention where
attention weights are read, and the grad mode. Only this module and the decoding loop call `model.hf(...)`.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import DynamicCache

from interp.core.hooks import HookFn, eager_attention, hooked
from interp.core.sites import Site
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.interventions import Intervention
    from interp.core.model import Model, TokenBatch
    from interp.core.prefix import PrefixKV

Logits = Literal["last", "all"] | int | None


@dataclass
class Forward:
    """What one `forward` returns. logits: [batch, vocab] for "last", [batch, seq, vocab] for "all", [batch, k, vocab]
    for an int k (the last k columns), None when not asked for or the forward stopped early; in the model's dtype,
    on its device. cache: the KV cache the forward filled (`keep_cache=True` or a prefix), else None."""

    logits: Tensor | None
    cache: Any = None


def _logits_to_keep(logits: Logits) -> int:
    if logits is None or logits == "last":
        return 1
    if logits == "all":
        return 0
    if isinstance(logits, int) and not isinstance(logits, bool) and logits >= 1:
        return logits
    raise InterpError(f"logits must be 'last', 'all', a positive number of final columns or None, got {logits!r}")


def forward(model: "Model", batch: "TokenBatch | None" = None, *, hooks: Mapping[Site, list[HookFn]] | None = None,
        edits: Sequence["Intervention"] = (), logits: Logits = "last", prefix: "PrefixKV | None" = None,
        rows: Int[Tensor, "b"] | None = None, stop_after: int | None = None, keep_cache: bool = False,
        cache: Any = None, inputs_embeds: Float[Tensor, "b seq d"] | None = None,
        attention_mask: Int[Tensor, "b seq"] | None = None, position_ids: Int[Tensor, "b seq"] | None = None,
        grad: bool | None = None, eager: bool = False) -> Forward:
    """One forward of `model.hf` (see the module docstring).

    batch: a left-padded `TokenBatch` (its mask and position ids are used), or None with `inputs_embeds`,
    `attention_mask` and `position_ids` given (the attack engine's embeddings). hooks: functions per site
    (`interp.core.hooks`: return None to read, a tensor to replace). edits: interventions applied for this forward
    only. prefix: a `PrefixKV` each batch row continues (row i continues prefix row `rows[i]`; default its only
    row); `stop_after` is passed to it so the cache holds only the layers run. keep_cache: fill and return a
    fresh `DynamicCache` holding every layer's keys and values (no sliding-window truncation). cache: an
    existing cache to continue (the caller built the mask and position ids for it). grad: True runs with
    autograd on, False under `torch.no_grad`, None (default) in the caller's grad mode. eager: eager attention
    for this forward (attention weights). Raises InterpError for bad arguments, and when an edit's hook in a
    layer that ran never fired.
    """
    from interp.core.interventions import applied

    if (batch is None) == (inputs_embeds is None):
        raise InterpError("forward needs either a TokenBatch or inputs_embeds (with attention_mask and position_ids)")
    keep = _logits_to_keep(logits)
    inputs: dict[str, Any]
    if batch is not None:
        if prefix is not None:
            inputs = prefix.inputs(batch, rows, stop_layer=stop_after)
        else:
            inputs = dict(batch.inputs())
    else:
        if attention_mask is None or position_ids is None:
            raise InterpError("forward with inputs_embeds needs attention_mask and position_ids")
        inputs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "position_ids": position_ids}
    if cache is not None and prefix is not None:
        raise InterpError("forward takes a prefix or a cache to continue, not both")
    if cache is None and prefix is None:
        cache = DynamicCache() if keep_cache else None  # no config: every key of every layer is kept
    if prefix is None:
        inputs["past_key_values"] = cache
        inputs["use_cache"] = cache is not None
    out = None
    with ExitStack() as stack:
        if grad is not None:
            stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
        stack.enter_context(eager_attention(model, eager))
        if edits:
            stack.enter_context(applied(model, edits))
        stack.enter_context(hooked(model, dict(hooks or {}), stop_after=stop_after))
        out = model.hf(**inputs, logits_to_keep=keep)  # `hooked` swallows the StopForward of `stop_after`
    if out is None or logits is None:  # stopped after `stop_after`, or no logits asked for
        return Forward(None, inputs.get("past_key_values"))
    return Forward(out.logits[:, -1] if logits == "last" else out.logits, inputs.get("past_key_values"))
