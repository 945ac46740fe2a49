"""Capture backends behind one interface: `capture_batch(batch, sites, reduce, stop_layer) -> {site: tensor}`.

`reduce(site, x)` receives a site's value in TransformerLens layout ([batch, seq, ...]; `attn.hook_z` as
[batch, seq, head, d_head]; `attn.hook_pattern` as [batch, head, q, k]) and returns what to keep, on the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.model import Model

BACKENDS = ("hooks", "transformer_lens", "nnsight")


def make_backend(name: str, model: "Model"):
    if name == "hooks":
        from interp.backends.hooks import HooksBackend

        return HooksBackend(model)
    if name == "transformer_lens":
        from interp.backends.tl import TransformerLensBackend

        return TransformerLensBackend(model)
    if name == "nnsight":
        from interp.backends.nnsight_backend import NnsightBackend

        return NnsightBackend(model)
    raise InterpError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
