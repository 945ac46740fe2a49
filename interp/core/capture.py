"""Batched activation capture: only the sites and positions asked for, moved to CPU as they are produced.

Prompts are sorted by length so that each batch carries little padding, padded on the left with position ids
that skip the pads, and run through the chosen backend. The forward stops after the deepest layer needed.
Under a row-dependent intervention (`RowwiseAdd`, ...) prompts keep their order, so row i is prompt i.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from tqdm.auto import tqdm

from interp.core.activations import Activations
from interp.core.positions import Positions, check_positions, select
from interp.core.prefix import PrefixKV, row_dependent, shared_prefix, wanted
from interp.core.sites import Site
from interp.core.system import DEFAULT_SYSTEM, System, system_record
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model


def pad_left(t: torch.Tensor, width: int, dims: Sequence[int]) -> torch.Tensor:
    """`t` zero-padded on the left of each of `dims` up to `width` (left-padded batches of different widths
    line up at their last column, where every prompt ends)."""
    for d in dims:
        missing = width - t.shape[d]
        if missing > 0:
            shape = list(t.shape)
            shape[d] = missing
            t = torch.cat([t.new_zeros(shape), t], dim=d)
    return t


def _shared_prefix(model: "Model", ids: list[list[int]], positions, stop: int | None, enabled: bool) -> "PrefixKV | None":
    """The shared leading tokens worth caching, when the positions asked for all lie after them."""
    if not enabled or not getattr(model.backend, "supports_prefix", False):
        return None
    if positions == "last":
        keep = 1
    elif positions == "eoi":
        keep = model.n_eoi
    elif isinstance(positions, list) and all(p < 0 for p in positions):
        keep = -min(positions)
    else:
        return None  # "all", "mean" and indices from the start read the prefix's own activations
    return shared_prefix(model, ids, keep, stop)


@torch.no_grad()
def capture(model: "Model", prompts: Sequence[str], sites, positions: Positions = "last", batch_size: int = 16,
            labels: Sequence | None = None, chat: bool | None = None, system: System = DEFAULT_SYSTEM,
            progress: bool | None = None, use_prefix_cache: bool | None = None) -> Activations:
    """Capture `sites` at `positions` for every prompt.

    positions: "last" (last token), "eoi" (the end-of-instruction tokens of the chat template), "all" (every
    token, pads zeroed, with a mask), "mean" (mean over real tokens), or token indices (negative from the end).
    With positions counted from the end, the tokens every prompt shares at its start (the chat template's
    system prompt and user header) run once and their KV cache is reused (`use_prefix_cache`; by default on the
    CPU only, see `interp.core.prefix.wanted`).
    """
    texts = model.prepare_prompts(prompts, chat, system)
    if labels is not None and len(labels) != len(prompts):
        raise InterpError(f"got {len(labels)} labels for {len(prompts)} prompts; give one label per prompt")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InterpError(f"batch_size must be a positive integer, got {batch_size!r}")
    site_list = model.sites(sites)
    positions = check_positions(positions, model.uses_chat(chat))
    ids = model.encode(texts)
    # stop after the deepest layer needed; a native site outside the decoder layers needs the whole forward
    stop = None if any(s.layer < 0 for s in site_list) else max(s.layer for s in site_list)
    # attention patterns keep every key column, so a cached prefix would reorder them: run those in full
    use_prefix_cache = wanted(model, use_prefix_cache) and not any(s.kind == "attn.hook_pattern" for s in site_list)
    prefix = _shared_prefix(model, ids, positions, stop, use_prefix_cache)
    if prefix is not None:
        ids = [row[prefix.width:] for row in ids]
    order = list(range(len(ids)))
    if not row_dependent(model):
        order.sort(key=lambda i: -len(ids[i]))
    n_eoi = model.n_eoi if positions == "eoi" else 0
    chunks: dict[Site, list[torch.Tensor]] = {s: [] for s in site_list}
    masks: list[torch.Tensor] = []
    show = progress if progress is not None else len(ids) > 4 * batch_size
    bar = tqdm(total=len(ids), desc="capture", unit="prompt", disable=not show)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = model.pad([ids[i] for i in rows])

        def reduce(site: Site, x: torch.Tensor) -> torch.Tensor:
            if site.kind == "attn.hook_pattern":  # [b, head, q, k] -> positions over the query axis
                x = x.transpose(1, 2)
            kept = select(x, batch.attention_mask, positions, n_eoi).detach().float()
            if kept.device.type != "cpu":
                return kept.cpu()
            # a view of x is copied: a layer may add into a module's output in place after the hook read it (Falcon)
            shares = kept.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
            return kept.clone() if shares else kept

        got = model.backend.capture_batch(batch, site_list, reduce, stop, **({"prefix": prefix} if prefix else {}))
        for s in site_list:
            chunks[s].append(got[s])
        masks.append(batch.attention_mask.cpu())
        bar.update(len(rows))
    bar.close()

    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    width = max(m.shape[1] for m in masks)
    acts = {}
    for s in site_list:
        # batches differ in width: pad the token axis ("all") and an attention pattern's key axis on the left
        dims = ([1] if positions == "all" else []) + ([-1] if s.kind == "attn.hook_pattern" else [])
        acts[s.name] = torch.cat([pad_left(p, width, dims) for p in chunks[s]])[inverse]
    mask = torch.cat([pad_left(m, width, [1]) for m in masks])[inverse].bool() if positions == "all" else None
    result = Activations(
        acts=acts,
        prompts=list(prompts),
        labels=list(labels) if labels is not None else None,
        positions=positions,
        model=model.fingerprint,
        mask=mask,
        position_tokens=model.eoi_tokens() if positions == "eoi" else None,
        system=system_record(system) if model.uses_chat(chat) else None,
    )
    if model.run_context.verifier is not None:  # interp.core.verify: rerun on the other backends and compare
        model.run_context.verifier.capture(result, dict(
            prompts=prompts, sites=[s.name for s in site_list], positions=positions, batch_size=batch_size,
            labels=labels, chat=chat, system=system, use_prefix_cache=use_prefix_cache))
    return result
