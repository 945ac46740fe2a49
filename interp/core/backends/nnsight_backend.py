"""Capture through nnsight 0.8: one `trace` over the HF model, reading each site's module input or output.

The wrapper (`nnsight.TransformersModel`, which `LanguageModel` is a deprecated alias of) is built lazily over
the very HF model object the `Model` holds. Sites resolve to modules from the same family table as the hooks
backend (`model.family.sites`): "in" is the module's first input, "out" its output (element 0 of a tuple;
`attn.hook_pattern` is element 1 of the attention module's output, which eager attention fills); a native site
is read at its module path. nnsight serves values in the order the forward produces them, so the modules are
read in the order a plain forward calls them (recorded once per set of modules by a forward with recording
hooks, no per-family table), and the trace stops (`tracer.stop()`) right after the last one. Interventions are
the runner's hooks on the same HF modules, which the trace runs: nnsight sees what they did to a module's input
and everything downstream of their edits, but it reads a module's output inside the module's call, before the
forward hooks that would rewrite it; capturing such an edited output is refused rather than returned unedited. With `remote=True` the trace runs on NDIF and the
raw values come back to be reduced here (untested: this machine has no NDIF access).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from interp.core.hooks import eager_attention
from interp.core.runner import forward
from interp.core.sites import HEAD_KINDS, Site
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model, TokenBatch

def _element(value, kind: str) -> Tensor:
    """The site's tensor inside a module output. In transformers 5 a decoder layer returns a bare tensor, where
    `value[0]` would silently be batch row 0, so only a tuple is indexed."""
    index = 1 if kind == "attn.hook_pattern" else 0
    if isinstance(value, tuple):
        if value[index] is None:
            raise InterpError("attention weights are not available: attn.hook_pattern needs eager attention")
        return value[index]
    if isinstance(value, Tensor) and index == 0:
        return value
    raise InterpError(f"unexpected module output ({type(value).__name__}) for {kind}")


def _edited(module: nn.Module) -> bool:
    """Whether an intervention hook of ours (interp.core.hooks) rewrites this module's output."""
    return any(getattr(fn, "__module__", "") == "interp.core.hooks" for fn in module._forward_hooks.values())


class NnsightBackend:
    name = "nnsight"

    def __init__(self, model: "Model", remote: bool | str = False):
        self.model = model
        self.remote = remote
        self._lm = None
        self._orders: dict[frozenset[tuple[str, str]], list[tuple[str, str]]] = {}

    @property
    def lm(self):
        """The nnsight wrapper of `model.hf`, built on first use."""
        if self._lm is None:
            from nnsight import TransformersModel

            # A copy of the tokenizer: nnsight sets its padding side, and the Model's own must stay as it is.
            tokenizer = copy.deepcopy(self.model.tokenizer)
            if tokenizer.pad_token_id is None:  # on the copy only, as the Model pads with its EOS (`Model.pad_id`)
                tokenizer.pad_token = tokenizer.eos_token
            self._lm = TransformersModel(self.model.hf, task="text-generation", tokenizer=tokenizer)
        return self._lm

    def _where(self, site: Site) -> tuple[str, str]:
        """(module path, "input" | "output") of a site; raises InterpError for one this model lacks."""
        self.model.site_module(site)
        if site.native:
            return site.path, site.kind
        family = self.model.family
        path, where = family.sites[site.kind]
        return f"{family.layers}.{site.layer}" + (f".{path}" if path else ""), "input" if where == "in" else "output"

    def _order(self, keys: list[tuple[str, str]], batch: "TokenBatch", stop_layer: int | None) -> list[tuple[str, str]]:
        """`keys` in the order a forward of `batch` reaches them (a module's input before its output); learnt once
        per set of keys, by a forward that stops after `stop_layer`."""
        known = self._orders.get(frozenset(keys))
        if known is not None:
            return known
        seen: list[tuple[str, str]] = []

        def mark(key: tuple[str, str]):
            def hook(*args):
                if key not in seen:
                    seen.append(key)
            return hook

        handles = []
        try:
            for path, attr in keys:
                module = self.model.hf.get_submodule(path)
                handles.append(module.register_forward_pre_hook(mark((path, attr))) if attr == "input"
                               else module.register_forward_hook(mark((path, attr))))
            forward(self.model, batch, logits=None, stop_after=stop_layer)  # the batch itself: interventions fit it
        finally:
            for h in handles:
                h.remove()
        if missing := [f"{p}.{a}" for p, a in keys if (p, a) not in seen]:
            raise InterpError(f"the forward never reached {', '.join(missing)}")
        self._orders[frozenset(keys)] = seen
        return seen

    def requests(self, sites: list[Site], batch: "TokenBatch", stop_layer: int | None = None
                 ) -> list[tuple[str, str, list[Site]]]:
        """(envoy path, "input"|"output", sites read there), in the order the forward reaches them."""
        groups: dict[tuple[str, str], list[Site]] = {}
        for site in sites:
            groups.setdefault(self._where(site), []).append(site)
        return [(path, attr, groups[path, attr]) for path, attr in self._order(list(groups), batch, stop_layer)]

    def _view(self, site: Site, attr: str, value) -> Tensor:
        """The site's value in TransformerLens layout, from the module's first input or its output."""
        x = value if attr == "input" else _element(value, site.kind)
        scale = self.model.family.scale(site.kind, self.model.hf.config)  # Granite's residual_multiplier
        x = x if scale == 1.0 else x * scale
        if site.kind in HEAD_KINDS:  # hook_k / hook_v have n_key_value_heads heads under grouped-query attention
            x = x.view(*x.shape[:-1], x.shape[-1] // self.model.d_head, self.model.d_head)
        return x

    @torch.no_grad()
    def capture_batch(self, batch: "TokenBatch", sites: list[Site], reduce: Callable[[Site, Tensor], Tensor],
                      stop_layer: int | None) -> dict[Site, Tensor]:
        """One trace; it stops right after the last requested value, which lies in layer `stop_layer` (the
        deepest requested) or earlier in it."""
        import nnsight

        lm = self.lm
        plan = self.requests(sites, batch, stop_layer)
        for envoy, attr, group in plan:
            if attr == "output" and _edited(self.model.hf.get_submodule(envoy)):
                raise InterpError(
                    f"the nnsight backend reads a module's output before the hooks that edit it run, so it cannot "
                    f"capture {', '.join(map(str, group))} while an intervention writes there; capture it with "
                    "backend='hooks' or 'transformer_lens', or read a later site")
        order = [s for _, _, group in plan for s in group]
        keep = (lambda site, x: x) if self.remote else reduce
        need_eager = any(s.kind == "attn.hook_pattern" for s in sites)
        with eager_attention(self.model, need_eager):
            with lm.trace(**batch.inputs(), use_cache=False, remote=self.remote) as tracer:
                values = []
                for envoy, attr, group in plan:
                    raw = lm.get(f"{envoy}.{attr}")
                    for site in group:
                        values.append(keep(site, self._view(site, attr, raw)))
                nnsight.save(values)
                tracer.stop()
        if len(values) != len(order):
            raise InterpError(f"the nnsight trace returned {len(values)} values for {len(order)} sites")
        got = dict(zip(order, values))
        return {s: reduce(s, got[s]) for s in sites} if self.remote else got
