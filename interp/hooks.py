"""Plain torch hooks on HF modules, addressed by canonical site. Users never see this module.

`hooked(model, fns)` registers one hook per site that calls the given functions on the site's value (a tensor
in TransformerLens layout; `attn.hook_z` as [batch, pos, head, d_head]). A function returns None to only read,
or a tensor to replace the value. Hooks are removed when the context exits, also when the body raises.
`stop_after=L` ends the forward once layer L has run (raising `StopForward`, which `hooked` swallows).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from torch import Tensor

from interp.errors import InterpError
from interp.sites import Site

if TYPE_CHECKING:
    from interp.model import Model

HookFn = Callable[[Site, Tensor], "Tensor | None"]


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once the deepest needed layer has run."""


def _to_view(model: "Model", site: Site, x: Tensor) -> Tensor:
    if site.kind == "attn.hook_z":
        return x.view(*x.shape[:-1], model.n_heads, model.d_head)
    return x


def _from_view(site: Site, y: Tensor, like: Tensor) -> Tensor:
    if site.kind == "attn.hook_z":
        return y.reshape(like.shape)
    return y


def _apply(model: "Model", site: Site, fns: list[HookFn], x: Tensor, fired: set[Site]) -> Tensor | None:
    fired.add(site)
    view = _to_view(model, site, x)
    changed = False
    for fn in fns:
        out = fn(site, view)
        if out is not None:
            if out.shape != view.shape:
                raise InterpError(f"a hook at {site} returned shape {tuple(out.shape)}, expected {tuple(view.shape)}")
            view, changed = out, True
    return _from_view(site, view, x) if changed else None


@contextmanager
def hooked(model: "Model", fns: dict[Site, list[HookFn]], stop_after: int | None = None,
           require_fired: bool = False) -> Iterator[set[Site]]:
    """Register `fns` at their sites for the duration of the block; yields the set of sites that fired."""
    handles = []
    fired: set[Site] = set()
    try:
        for site, site_fns in sorted(fns.items()):
            module, where = model.site_module(site)
            if where == "in":
                handles.append(module.register_forward_pre_hook(_pre_hook(model, site, site_fns, fired), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(_post_hook(model, site, site_fns, fired)))
        if stop_after is not None:
            handles.append(model.layers[stop_after].register_forward_hook(_raise_stop))
        try:
            yield fired
        except StopForward:
            pass
        else:
            if require_fired and fired:
                # A forward stopped early (capture) legitimately skips deeper layers; shallower ones must have fired.
                deepest = max(s.layer for s in fired)
                missing = [s for s in fns if s not in fired and s.layer <= deepest]
                if missing:
                    raise InterpError(f"hooks at {', '.join(map(str, sorted(missing)))} never fired: the intervention did nothing there")
    finally:
        for h in handles:
            h.remove()


def _raise_stop(module, args, output):
    raise StopForward


def _pre_hook(model: "Model", site: Site, fns: list[HookFn], fired: set[Site]):
    def hook(module, args, kwargs):
        if args:
            new = _apply(model, site, fns, args[0], fired)
            return None if new is None else ((new, *args[1:]), kwargs)
        key = "hidden_states" if "hidden_states" in kwargs else "input"
        new = _apply(model, site, fns, kwargs[key], fired)
        return None if new is None else (args, {**kwargs, key: new})

    return hook


def _post_hook(model: "Model", site: Site, fns: list[HookFn], fired: set[Site]):
    index = 1 if site.kind == "attn.hook_pattern" else 0

    def hook(module, args, output):
        if isinstance(output, tuple):
            if site.kind == "attn.hook_pattern" and output[1] is None:
                raise InterpError("attention weights are not available: attn.hook_pattern needs eager attention")
            new = _apply(model, site, fns, output[index], fired)
            return None if new is None else (*output[:index], new, *output[index + 1:])
        if isinstance(output, Tensor):
            new = _apply(model, site, fns, output, fired)
            return new
        raise InterpError(f"unexpected output type {type(output).__name__} at {site}")

    return hook


@contextmanager
def eager_attention(model: "Model", needed: bool) -> Iterator[None]:
    """Temporarily switch to eager attention (attention weights are only materialised there)."""
    hf = model.hf
    old = getattr(hf.config, "_attn_implementation", None)
    if not needed or old == "eager":
        yield
        return
    hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        hf.set_attn_implementation(old)
