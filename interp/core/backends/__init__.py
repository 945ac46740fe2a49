"""Capture backends behind one interface: `capture_batch(batch, sites, reduce, stop_layer) -> {site: tensor}`.

`reduce(site, x)` receives a site's value in TransformerLens layout ([batch, seq, ...]; `attn.hook_z` as
[batch, seq, head, d_head]; `attn.hook_pattern` as [batch, head, q, k]) and returns what to keep, on the CPU.

transformer-lens and nnsight are optional extras (`pip install 'interp[transformer-lens]'`, `'interp[nnsight]'`,
or `'interp[backends]'` for both); choosing a backend whose package is missing fails in one line naming the extra.

Options for a backend come from `model.backend_options` (a dict, empty by default), read when the backend is
first built: `{"remote": True}` runs the nnsight backend's traces on NDIF.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model

BACKENDS = ("hooks", "transformer_lens", "nnsight")


EXTRAS = {"transformer_lens": ("transformer_lens", "transformer-lens"), "nnsight": ("nnsight", "nnsight")}


def _require(name: str) -> None:
    """A one-line error naming the extra to install when an optional backend's package is missing."""
    if name in EXTRAS:
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise InterpError(f"the {name} backend needs the {extra} package, which is not installed: "
                              f"pip install 'interp[{extra}]' (the default install has the hooks backend only)")


def make_backend(name: str, model: "Model"):
    _require(name)
    options = dict(getattr(model, "backend_options", None) or {})
    if options and name != "nnsight":
        raise InterpError(f"the {name} backend takes no options, got {', '.join(options)}; only nnsight takes remote=")
    if name == "hooks":
        from interp.core.backends.hooks import HooksBackend

        return HooksBackend(model)
    if name == "transformer_lens":
        from interp.core.backends.tl import TransformerLensBackend

        return TransformerLensBackend(model)
    if name == "nnsight":
        from interp.core.backends.nnsight_backend import NnsightBackend

        if unknown := set(options) - {"remote"}:
            raise InterpError(f"unknown nnsight backend option(s) {', '.join(sorted(unknown))}; the only option is remote")
        return NnsightBackend(model, **options)
    raise InterpError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
