"""Capture through nnsight 0.8: one `trace` over the HF model, reading each site's module input or output.

The wrapper (`nnsight.TransformersModel`, which `LanguageModel` is a deprecated alias of) is built lazily over
the very HF model object the `Model` holds. Sites resolve to modules from the same family table as the hooks
backend (`model.family.sites`): "in" is the module's first input, "out" its output (element 0 of a tuple;
`attn.hook_pattern` is element 1 of the attention module's output, which eager attention fills). nnsight serves
values in the order the forward produces them, so the sites are read module by module in execution order, and
the trace stops (`tracer.stop()`) right after the last one. With `remote=True` the trace runs on NDIF and the
raw values come back to be reduced here (untested: this machine has no NDIF access).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from interp.core.hooks import eager_attention
from interp.core.sites import Site
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model, TokenBatch

# The order in which the forward of one decoder layer produces each kind (pre-norm blocks: Llama, Qwen2,
# Gemma, GPT-2). Sites of one module are read in one request, so the pattern and attn_out may share a rank.
EXECUTION_ORDER = {
    "hook_resid_pre": 0,
    "attn.hook_z": 1,
    "attn.hook_pattern": 2,
    "hook_attn_out": 3,
    "hook_resid_mid": 4,
    "mlp.hook_post": 5,
    "hook_mlp_out": 6,
    "hook_resid_post": 7,
}


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


class NnsightBackend:
    name = "nnsight"

    def __init__(self, model: "Model", remote: bool | str = False):
        self.model = model
        self.remote = remote
        self._lm = None

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

    def requests(self, sites: list[Site]) -> list[tuple[str, str, list[Site]]]:
        """(envoy path, "input"|"output", sites read there), in the order the forward reaches them."""
        family = self.model.family
        groups: dict[tuple[str, str], list[Site]] = {}
        for site in sorted(sites, key=lambda s: (s.layer, EXECUTION_ORDER[s.kind])):
            self.model.site_module(site)  # a one-line error for a kind this family (or model) lacks
            path, where = family.sites[site.kind]
            envoy = f"{family.layers}.{site.layer}" + (f".{path}" if path else "")
            groups.setdefault((envoy, "input" if where == "in" else "output"), []).append(site)
        return [(envoy, attr, group) for (envoy, attr), group in groups.items()]

    def _view(self, site: Site, attr: str, value) -> Tensor:
        """The site's value in TransformerLens layout, from the module's first input or its output."""
        x = value if attr == "input" else _element(value, site.kind)
        scale = self.model.family.scale(site.kind, self.model.hf.config)  # Granite's residual_multiplier
        x = x if scale == 1.0 else x * scale
        if site.kind == "attn.hook_z":
            x = x.view(*x.shape[:-1], self.model.n_heads, self.model.d_head)
        return x

    @torch.no_grad()
    def capture_batch(self, batch: "TokenBatch", sites: list[Site], reduce: Callable[[Site, Tensor], Tensor],
                      stop_layer: int) -> dict[Site, Tensor]:
        """One trace; it stops right after the last requested value, which lies in layer `stop_layer` (the
        deepest requested) or earlier in it."""
        import nnsight

        lm = self.lm
        plan = self.requests(sites)
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
