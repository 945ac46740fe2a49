"""Prefix KV caches: run the tokens that rows share once, and continue every forward from their keys and values.

The one module for the three users:
- capture, `Model.logits` and `Model.generate`: chat templates put the same tokens (system prompt, user
  header) before every instruction, often a large part of a short prompt; they run once per call;
- candidate scoring (`interp.directions.scoring`): that prefix once per candidate, under the candidate's intervention;
- the attack engine: each behaviour's own fixed prefix (everything before its first mask), rows of different
  prefix lengths side by side.

Built on transformers' public cache API: a prefix runs with a fresh `DynamicCache`, its keys and values are
read per layer from `cache.layers`, and every forward that continues it gets a fresh `DynamicCache(config=...)`
filled with `cache.update(keys, values, layer)` (a forward appends to its cache in place, so none is reused).

Layout: prefixes are left-padded to one width (`PrefixKV.ids`, keys [rows, kv_heads, width, d_head]); the rows
of a batch that continue them are left-padded too, so a row is [pads, its prefix, pads, its suffix]. The
attention mask covers both parts and position ids count real tokens only, so each row computes exactly what
its full prompt computes alone. `usable` says when that holds for the interventions active now:
- position-independent interventions (`Add`, `Ablate`, `Project`, `Set` at "all") run in the prefix pass, as
  they would in the full forward; position-dependent ones (`Set` at positions counted from the end) stand aside
  there (`interp.core.hooks.prefix_pass`), and the prefix always leaves every row the last `tail` tokens they touch;
- a row-dependent intervention (`RowwiseAdd`, `RowwiseAblate`) would need one prefix row per batch row: only
  candidate scoring arranges that; capture, `logits` and `generate` run the full prompts instead;
- a sliding window counts key columns, pads included: the cache is used only where every padded row fits in
  the smallest window (Gemma 2/3 windows are 512 to 4096 tokens), so the window never cuts a key off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import DynamicCache

from interp.core.hooks import prefix_pass
from interp.core.runner import forward
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model, TokenBatch

MIN_PREFIX = 4  # shorter shared prefixes are not worth a separate forward


def common_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """How many leading token ids every row shares."""
    first, n = ids[0], min(len(r) for r in ids)
    for i in range(n):
        if any(r[i] != first[i] for r in ids):
            return i
    return n


def sliding_window(model: "Model") -> int | None:
    """The smallest sliding attention window of the model's layers, None when every layer attends to all keys."""
    windows = [getattr(layer, "sliding_window", None) for layer in DynamicCache(config=model.hf.config).layers]
    return min((w for w in windows if w), default=None)


@dataclass(frozen=True)
class PrefixRule:
    """How a prefix cache treats one intervention. tail: how many final prompt tokens it touches differently from
    the rest (0: it acts alike at every token, so it runs in the prefix pass too; None: it cannot be split
    between a prefix and a suffix, so no prefix may be cached). rows: whether it treats batch rows differently."""

    tail: int | None
    rows: bool

    @property
    def in_prefix(self) -> bool:
        """Whether the intervention also acts while the shared prefix runs (position-independent ones do)."""
        return self.tail == 0


UNKNOWN = PrefixRule(tail=None, rows=True)
SAME_EVERYWHERE = PrefixRule(tail=0, rows=False)  # acts alike at every token and every row

_EXTENSION_RULES: dict[type, PrefixRule | Callable[[Any], PrefixRule]] = {}


def register_rule(kind: type, rule_: PrefixRule | Callable[[Any], PrefixRule]) -> None:
    """Declare how the prefix cache treats an intervention kind defined above the core (ITI's `HeadSteering`,
    `ChannelEdit`): called once, next to the kind's definition, with a rule, or with a function from an instance
    to its rule where the kind's fields decide it (as `Set`'s positions do). Raises if the kind already has
    another rule."""
    old = _EXTENSION_RULES.get(kind)
    same = old == rule_ or (callable(old) and callable(rule_) and
                            (old.__module__, old.__qualname__) == (rule_.__module__, rule_.__qualname__))
    if old is not None and not same:
        raise InterpError(f"{kind.__name__} already has a prefix-cache rule ({old}); declare it once")
    _EXTENSION_RULES[kind] = rule_


def rule(iv: Any) -> PrefixRule:
    """The prefix-cache rule for an intervention, decided here from the kinds of edit this module knows (the
    core's, and those declared with `register_rule`), never from what an intervention says of itself; anything
    else gets `UNKNOWN` (no prefix cache, rows kept apart)."""
    from interp.core.interventions import (
        Ablate,
        Add,
        Patch,
        Project,
        RowwiseAblate,
        RowwiseAdd,
        Set,
        SubspacePatch,
        WeightedAblate,
    )

    if type(iv) in (Add, Ablate, Project, WeightedAblate):
        return SAME_EVERYWHERE
    if type(iv) in _EXTENSION_RULES:
        extension = _EXTENSION_RULES[type(iv)]
        return extension if isinstance(extension, PrefixRule) else extension(iv)
    if type(iv) in (RowwiseAdd, RowwiseAblate):
        return PrefixRule(tail=0, rows=True)
    if type(iv) is Set:
        rows = iv.value.dim() == 3 and iv.value.shape[0] > 1
        one_value = iv.value.dim() == 1 or iv.value.shape[-2] == 1
        if iv.positions == "all":  # one value everywhere is position-independent; k values at "all" are not
            return PrefixRule(tail=0 if one_value else None, rows=rows)
        assert not isinstance(iv.positions, str)  # "all" is the only string Set lets through
        return PrefixRule(tail=-min(iv.positions), rows=rows)
    if type(iv) in (Patch, SubspacePatch):
        return PrefixRule(tail=None if iv.positions == "all" else -min(iv.positions), rows=True)
    return UNKNOWN


def row_dependent(model: "Model") -> bool:
    """Whether an active intervention treats batch rows differently (unknown kinds count as dependent)."""
    return any(rule(iv).rows for iv in model.run_context.active)


def in_prefix(model: "Model") -> frozenset[int]:
    """The ids of the active interventions that act in a prefix pass (the position-independent ones)."""
    return frozenset(id(iv) for iv in model.run_context.active if rule(iv).in_prefix)


def tail(model: "Model") -> int | None:
    """How many final prompt tokens the active position-dependent interventions touch: 0 when none is active,
    None when one cannot say (then no prefix may be cached)."""
    need = 0
    for iv in model.run_context.active:
        t = rule(iv).tail
        if t is None:
            return None
        need = max(need, t)
    return need


def usable(model: "Model", longest: int, suffix: int = 1) -> bool:
    """Whether continuing a prefix cache gives the full forward's numbers for padded rows of up to `longest`
    tokens whose own parts (after the prefix) are at least `suffix` tokens long, under the interventions
    active now (see the module docstring)."""
    need = tail(model)
    if row_dependent(model) or need is None or need > suffix:
        return False
    window = sliding_window(model)
    return window is None or longest <= window


def shared_length(model: "Model", ids: Sequence[Sequence[int]], keep: int = 1, extra: int = 0) -> int:
    """Length of the prefix all `ids` share that is worth caching and exact to cache (0: none), leaving every
    row at least `keep` tokens of its own and every token an active position-dependent intervention touches.
    `extra`: tokens that will follow the longest row (generation)."""
    need = tail(model)
    if need is None:
        return 0
    keep = max(keep, need, 1)
    length = min(common_prefix_length(ids), min(len(r) for r in ids) - keep)
    longest = max(len(r) for r in ids) + extra
    return length if length >= MIN_PREFIX and usable(model, longest, keep) else 0


@dataclass
class PrefixKV:
    """Keys and values of left-padded prefixes: row r's real tokens are the last `lengths[r]` of `ids[r]`, and
    `kv[layer]` holds (keys, values) [rows, kv_heads, width, d_head] for the layers that were run."""

    ids: Int[Tensor, "rows width"]
    lengths: Int[Tensor, "rows"]
    kv: list[tuple[Float[Tensor, "rows h width d"], Float[Tensor, "rows h width d"]]]
    config: Any  # the model's config, which shapes the caches built from these (sliding-window layers)
    key_mask: Int[Tensor, "rows width"] | None = None  # which columns are real tokens, where pads sit inside (`extend`)

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    @property
    def mask(self) -> Int[Tensor, "rows width"]:
        if self.key_mask is not None:
            return self.key_mask
        cols = torch.arange(self.width, device=self.lengths.device)
        return (cols[None] >= (self.width - self.lengths)[:, None]).long()

    @classmethod
    @torch.no_grad()
    def compute(cls, model: "Model", prefixes: Sequence[Sequence[int]], stop_layer: int | None = None) -> "PrefixKV":
        """Run the prefixes (one left-padded batch, one row each) under the active position-independent
        interventions, stopping after `stop_layer` when later layers are never needed."""
        if any(len(p) == 0 for p in prefixes):
            raise InterpError("an empty prefix cannot be cached; leave that row without a prefix")
        batch = model.pad(prefixes)
        with prefix_pass(model, in_prefix(model)):  # keep_cache: no config, sliding-window layers would keep only their window
            cache = forward(model, batch, keep_cache=True, stop_after=stop_layer, logits=None).cache
        kv = [(layer.keys, layer.values) for layer in cache.layers if layer.is_initialized and layer.keys.numel()]
        return cls(batch.input_ids, batch.lengths, kv, model.hf.config)

    @classmethod
    def cat(cls, parts: Sequence["PrefixKV"]) -> "PrefixKV":
        """The rows of several prefix computations, left-padded to the widest."""
        width = max(p.width for p in parts)

        def pad(t: Tensor, dim: int, value: int = 0) -> Tensor:
            missing = width - t.shape[dim]
            if not missing:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_full(shape, value), t], dim)

        n_layers = min(len(p.kv) for p in parts)
        kv = [(torch.cat([pad(p.kv[i][0], 2) for p in parts]), torch.cat([pad(p.kv[i][1], 2) for p in parts]))
              for i in range(n_layers)]
        key_mask = torch.cat([pad(p.mask, 1) for p in parts]) if any(p.key_mask is not None for p in parts) else None
        return cls(torch.cat([pad(p.ids, 1) for p in parts]), torch.cat([p.lengths for p in parts]), kv, parts[0].config,
                   key_mask)

    @torch.no_grad()
    def extend(self, model: "Model", suffixes: Sequence[Sequence[int]], rows: Int[Tensor, "b"] | None = None) -> "PrefixKV":
        """A longer prefix per suffix: row i is prefix row `rows[i]` followed by `suffixes[i]`, run once here (under
        the active position-independent interventions, as `compute` does), so that many rows can continue each of
        them. Two levels of sharing: a few-shot preamble once, then each question once for all its answers. The
        new rows are [pads, prefix, pads, suffix]; `key_mask` records where the real tokens are."""
        if any(len(s) == 0 for s in suffixes):
            raise InterpError("an empty suffix cannot extend a prefix; keep that row's prefix as it is")
        batch = model.pad(suffixes)
        rows = self._rows(rows, len(suffixes))
        with prefix_pass(model, in_prefix(model)):
            cache = forward(model, batch, prefix=self, rows=rows, stop_after=len(self.kv) - 1, logits=None).cache
        kv = [(layer.keys, layer.values) for layer in cache.layers[:len(self.kv)]]
        return PrefixKV(torch.cat([self.ids[rows].to(batch.input_ids), batch.input_ids], 1),
                        self.lengths[rows].to(batch.input_ids) + batch.lengths, kv, self.config,
                        torch.cat([self.mask[rows].to(batch.attention_mask), batch.attention_mask], 1))

    def split(self) -> list["PrefixKV"]:
        """One `PrefixKV` per row, without padding (copies, so the batch they came from can be freed)."""
        out = []
        for r in range(self.rows):
            start = int(self.mask[r].nonzero()[0])  # the first real column (pads may also sit inside, `extend`)
            kv = [(k[r:r + 1, :, start:].clone(), v[r:r + 1, :, start:].clone()) for k, v in self.kv]
            key_mask = None if self.key_mask is None else self.key_mask[r:r + 1, start:].clone()
            out.append(PrefixKV(self.ids[r:r + 1, start:].clone(), self.lengths[r:r + 1].clone(), kv, self.config, key_mask))
        return out

    def _rows(self, rows: Tensor | None, b: int) -> Tensor:
        if rows is None:
            if self.rows != 1:
                raise InterpError(f"this prefix has {self.rows} rows: say which one each of the {b} batch rows continues")
            return torch.zeros(b, dtype=torch.long, device=self.lengths.device)
        return rows.to(self.lengths.device)

    def cache(self, rows: Int[Tensor, "b"], stop_layer: int | None = None) -> DynamicCache:
        """A fresh cache holding prefix row `rows[i]` for batch row i, for a forward that runs up to
        `stop_layer` (None: every layer)."""
        n_layers = self.config.get_text_config(decoder=True).num_hidden_layers
        need = n_layers if stop_layer is None else stop_layer + 1
        if len(self.kv) < need:
            raise InterpError(f"this prefix was run through {len(self.kv)} layers, but the forward needs {need}; "
                              "compute it with the same stop_layer as the forward")
        cache = DynamicCache(config=self.config)
        for layer, (k, v) in enumerate(self.kv[:need]):
            cache.update(k[rows], v[rows], layer)
        return cache

    def inputs(self, suffix: "TokenBatch", rows: Int[Tensor, "b"] | None = None,
               stop_layer: int | None = None) -> dict[str, Any]:
        """Forward inputs for a left-padded batch of suffixes; batch row i continues prefix row `rows[i]`
        (default: the only one). The attention mask covers prefix and suffix; position ids continue after
        each row's prefix."""
        rows = self._rows(rows, suffix.input_ids.shape[0])
        return {
            "input_ids": suffix.input_ids,
            "attention_mask": torch.cat([self.mask[rows].to(suffix.attention_mask), suffix.attention_mask], 1),
            "position_ids": self.lengths[rows, None].to(suffix.position_ids) + suffix.position_ids,
            "past_key_values": self.cache(rows, stop_layer),
            "use_cache": True,
        }

    def generate_inputs(self, suffix: "TokenBatch", rows: Int[Tensor, "b"] | None = None) -> dict[str, Any]:
        """Inputs for HF `generate`: the whole rows' ids (it runs only those after the cached ones), the mask
        over them (it derives position ids from it), and the cache."""
        rows = self._rows(rows, suffix.input_ids.shape[0])
        return {
            "input_ids": torch.cat([self.ids[rows].to(suffix.input_ids), suffix.input_ids], 1),
            "attention_mask": torch.cat([self.mask[rows].to(suffix.attention_mask), suffix.attention_mask], 1),
            "past_key_values": self.cache(rows),
        }


def wanted(model: "Model", use_prefix_cache: bool | None) -> bool:
    """Resolve `use_prefix_cache=None` (the default of capture, `logits` and `generate`): on the CPU, where a
    forward is compute-bound and the shared chat prefix is a large part of a short prompt, the cache saves that
    compute; on a GPU, batches of short prompts are bound by kernel launches, and the extra prefix forward does
    not pay for itself (capture with and without the cache: benchmarks/results/gpu_qwen15_random.json). True or
    False forces it."""
    return model.device.type == "cpu" if use_prefix_cache is None else bool(use_prefix_cache)


def shared_prefix(model: "Model", ids: Sequence[Sequence[int]], keep: int = 1, stop_layer: int | None = None,
                  extra: int = 0) -> PrefixKV | None:
    """The prefix every row of `ids` shares, computed once, when caching it is worth it and exact (see
    `shared_length`); None otherwise. Continue it with `ids[i][prefix.width:]`."""
    if len(ids) < 2:
        return None
    length = shared_length(model, ids, keep, extra)
    return PrefixKV.compute(model, [ids[0][:length]], stop_layer) if length else None
