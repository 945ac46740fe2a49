"""Which token positions to keep from a [batch, seq, ...] activation of a left-padded batch."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import InterpError

Positions = Union[str, int, Sequence[int]]
NAMED = ("last", "eoi", "all", "mean")


def check_positions(positions: Positions, chat: bool = True) -> str | list[int]:
    """`positions` checked and normalised (an int becomes a one-item list), for prompts that are chat-formatted
    (`chat`, see `Model.uses_chat`) or raw: "eoi" names the chat template's end-of-instruction tokens, which raw
    prompts do not have (their last tokens are the instruction's own)."""
    if isinstance(positions, str):
        if positions not in NAMED:
            raise InterpError(f"unknown positions {positions!r}; use one of {', '.join(NAMED)}, or token indices (negative from the end)")
        if positions == "eoi" and not chat:
            raise InterpError("positions='eoi' means the chat template's end-of-instruction tokens, but these prompts are raw "
                              "(chat=False, or the model has no chat template); use chat=True, or positions='last'")
        return positions
    if isinstance(positions, int) and not isinstance(positions, bool):
        return [positions]
    if isinstance(positions, bool):  # what iterating it below would raise
        raise InterpError(f"positions must be a name ({', '.join(NAMED)}) or a list of ints, got {positions!r}")
    try:
        idx = [int(p) for p in positions]
    except (TypeError, ValueError):
        raise InterpError(f"positions must be a name ({', '.join(NAMED)}) or a list of ints, got {positions!r}") from None
    if not idx:
        raise InterpError("positions is an empty list; give at least one index")
    return idx


def select(x: Float[Tensor, "batch seq *rest"], mask: Tensor, positions: Positions, n_eoi: int) -> Tensor:
    """Keep the requested positions. Returns [batch, *rest] for last/mean, [batch, k, *rest] for eoi or
    index lists, and [batch, seq, *rest] (pads zeroed) for all."""
    if positions == "last":
        return x[:, -1]
    if positions == "eoi":
        return x[:, -n_eoi:]
    m = mask.to(x.dtype).view(*mask.shape, *([1] * (x.dim() - 2)))
    if positions == "all":
        return x * m
    if positions == "mean":
        return (x * m).sum(1) / m.sum(1)
    assert not isinstance(positions, (str, int)), positions  # normalised by check_positions
    lengths = mask.sum(-1)
    seq = x.shape[1]
    cols = []
    for p in positions:  # negative: from the end; non-negative: from the first real token
        col = torch.full_like(lengths, seq + p) if p < 0 else (seq - lengths + p)
        if (col < seq - lengths).any() or (col >= seq).any():
            raise InterpError(f"position {p} is outside a prompt of this batch (shortest prompt: {int(lengths.min())} tokens)")
        cols.append(col)
    index = torch.stack(cols, 1)  # [batch, k]
    gather = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, gather.to(x.device))
