"""Plain torch hooks on HF modules, addressed by canonical site. Users never see this module.

`hooked(model, fns)` registers one hook per site that calls the given functions on the site's value (a tensor
in TransformerLens layout; `attn.hook_z` and `attn.hook_q|k|v` as [batch, pos, head, d_head]). A function returns None to only read,
or a tensor to replace the value. Hooks are removed when the context exits, also when the body raises.
`stop_after=L` ends the forward once layer L has run (raising `StopForward`, which `hooked` swallows).

`model.run_context` (a `RunContext`, an ordinary attribute the Model creates in `__init__`) is what hooks may
need to know about the forward now running: which interventions are active, whether a shared prefix is being run
(`interp.core.prefix`), and whether the forward is a generation step. Every field is set by a context manager
(`interp.core.interventions.applied`, `prefix_pass`, `tracking_steps`) and restored when its block exits.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from torch import Tensor

from interp.core.sites import HEAD_KINDS, Site
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model

HookFn = Callable[[Site, Tensor], "Tensor | None"]


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once the deepest needed layer has run."""


@dataclass
class RunContext:
    """Per-model facts about the forward now running, read by intervention hooks (`Model.run_context`).

    active: the interventions applied now (outermost first), so prefix caching can ask whether they depend on
    positions or rows. prefix_pass: a shared prefix is being run once for many rows (`interp.core.prefix`);
    position-dependent interventions stand aside. decoding: this forward continues a KV cache that an earlier
    forward filled, i.e. a generation step, not the prompt (see `tracking_steps`).
    """

    active: list[Any] = field(default_factory=list)
    prefix_pass: bool = False
    prefix_allowed: frozenset[int] = frozenset()  # ids of the active interventions that act in the prefix pass
    decoding: bool = False
    verifier: Any = None  # set by interp.core.verify.verifying: reruns captures and logits on the other backends
    _last_cache: Any = None  # weak reference to the cache object of the previous forward
    _tracking: int = 0


@contextmanager
def tracking_steps(model: "Model") -> Iterator[None]:
    """Inside the block, `model.run_context.decoding` says whether each forward is a generation step.

    The signal is the KV cache object: the first forward that uses a cache is the prompt (all of it, or the
    rest of it after a cached prefix, however short); a later forward that passes the same cache object again
    continues it, which is what a generation step does. A forward without a cache is always a prompt. (Input
    length is no signal: a prompt's suffix after a cached prefix can be one token long.)
    """
    state = model.run_context
    if state._tracking:  # nested blocks share the outer tracker
        state._tracking += 1
        try:
            yield
        finally:
            state._tracking -= 1
        return

    def hook(module, args, kwargs):
        cache = kwargs.get("past_key_values")
        last = state._last_cache() if state._last_cache is not None else None
        state.decoding = cache is not None and cache is last
        state._last_cache = weakref.ref(cache) if cache is not None else None

    handle = model.hf.register_forward_pre_hook(hook, with_kwargs=True)
    state._tracking = 1
    try:
        yield
    finally:
        handle.remove()
        state._tracking, state.decoding, state._last_cache = 0, False, None


@contextmanager
def prefix_pass(model: "Model", allowed: frozenset[int] = frozenset()) -> Iterator[None]:
    """Mark the forwards in the block as runs of a shared prefix: only the interventions whose ids are in
    `allowed` act there (`interp.core.prefix` decides which)."""
    state = model.run_context
    old = state.prefix_pass, state.prefix_allowed
    state.prefix_pass, state.prefix_allowed = True, frozenset(allowed)
    try:
        yield
    finally:
        state.prefix_pass, state.prefix_allowed = old


def outside_prefix(model: "Model", fn: "HookFn", key: int) -> "HookFn":
    """`fn`, except during a prefix pass that does not allow the intervention `key`, where it leaves the value
    alone."""
    state = model.run_context

    def wrapped(site: Site, x: Tensor) -> Tensor | None:
        return None if state.prefix_pass and key not in state.prefix_allowed else fn(site, x)

    return wrapped


def _to_view(model: "Model", site: Site, x: Tensor) -> Tensor:
    if site.kind in HEAD_KINDS:  # hook_k / hook_v have n_key_value_heads heads under grouped-query attention
        return x.view(*x.shape[:-1], x.shape[-1] // model.d_head, model.d_head)
    return x


def _from_view(site: Site, y: Tensor, like: Tensor) -> Tensor:
    if site.kind in HEAD_KINDS:
        return y.reshape(like.shape)
    return y


def _apply(model: "Model", site: Site, fns: list[HookFn], x: Tensor, fired: set[Site], ready: bool = False) -> Tensor | None:
    """Run `fns` on the site's value made from `x`; the tensor to put back in `x`'s place, or None to leave it.
    ready: `x` is the site's value already (a TransformerLens hook point), no family scale, no head split."""
    fired.add(site)
    if ready:
        return _run(site, fns, x)
    scale = model.family.scale(site.kind, model.hf.config)  # the site's value is the module's times this (Granite)
    view = _to_view(model, site, x if scale == 1.0 else x * scale)
    new = _run(site, fns, view)
    if new is None and site.kind in model.family.copy_out:  # the layer adds into this output in place
        return x.clone()
    if new is None:
        if scale != 1.0 and view.requires_grad:  # pass the scaled value on, so gradient hooks on it see the backward
            return _from_view(site, view / scale, x)
        return None
    return _from_view(site, new if scale == 1.0 else new / scale, x)


def _run(site: Site, fns: list[HookFn], value: Tensor) -> Tensor | None:
    """Each function in turn on the value (a function's replacement is what the next one sees); the final value,
    or None when none replaced it."""
    changed = False
    for fn in fns:
        out = fn(site, value)
        if out is not None:
            if out.shape != value.shape:
                raise InterpError(f"a hook at {site} returned shape {tuple(out.shape)}, expected {tuple(value.shape)}")
            value, changed = out, True
    return value if changed else None


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
                handles.append(module.register_forward_hook(_post_hook(model, site, site_fns, fired, where == "hook")))
        if stop_after is not None:
            handles.append(model.layers[stop_after].register_forward_hook(_raise_stop))
        reached: set[int] = set()  # the layers of `fns` that some forward in the block started
        if require_fired:
            for i in sorted({s.layer for s in fns if s.layer >= 0}):  # native sites outside the layers: -1
                handles.append(model.layers[i].register_forward_pre_hook(_mark_reached(reached, i)))
        try:
            yield fired
        except StopForward:
            pass
        else:
            if require_fired:
                # A forward stopped early (capture) legitimately skips deeper layers; the layers it ran must have fired.
                missing = [s for s in fns if s not in fired and s.layer in reached]
                if missing:
                    raise InterpError(f"hooks at {', '.join(map(str, sorted(missing)))} never fired: the intervention did nothing there")
    finally:
        for h in handles:
            h.remove()


def _mark_reached(reached: set[int], layer: int):
    def hook(module, args):
        reached.add(layer)

    return hook


def _raise_stop(module, args, output):
    raise StopForward


def _pre_hook(model: "Model", site: Site, fns: list[HookFn], fired: set[Site]):
    def hook(module, args, kwargs):
        if args:
            new = _apply(model, site, fns, args[0], fired)
            return None if new is None else ((new, *args[1:]), kwargs)
        # called with keywords only: the hidden states (decoder layers), else the first tensor argument
        key = "hidden_states" if "hidden_states" in kwargs else next(
            (k for k, v in kwargs.items() if isinstance(v, Tensor)), None)
        if key is None:
            raise InterpError(f"the module at {site} was called without a tensor input; read its output instead")
        new = _apply(model, site, fns, kwargs[key], fired)
        return None if new is None else (args, {**kwargs, key: new})

    return hook


def _post_hook(model: "Model", site: Site, fns: list[HookFn], fired: set[Site], ready: bool = False):
    index = 1 if site.kind == "attn.hook_pattern" else 0

    def hook(module, args, output):
        if isinstance(output, tuple):
            if site.kind == "attn.hook_pattern" and output[1] is None:
                raise InterpError("attention weights are not available: attn.hook_pattern needs eager attention")
            new = _apply(model, site, fns, output[index], fired, ready)
            return None if new is None else (*output[:index], new, *output[index + 1:])
        if isinstance(output, Tensor) and ready:
            # a TransformerLens hook point: its hook_conversion (if any) gives the value in TransformerLens layout
            conversion = getattr(module, "hook_conversion", None)
            value = output if conversion is None else conversion.convert(output)
            new = _apply(model, site, fns, value, fired, ready)
            return new if new is None or conversion is None else conversion.revert(new)
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
