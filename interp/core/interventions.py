"""Interventions as values, applied by a context manager that never mutates the model.

Each intervention is a frozen dataclass that says *what* to do at which sites; `applied(model, [...])`
turns them into hooks for the duration of a `with` block (or a `model.generate(..., interventions=...)` call).
They act on every batch row and every position, including the tokens produced during KV-cached generation,
and the block fails loudly if one of its hooks never fired.

- `Add(vector, layer, alpha)`: activation addition (Turner et al.; Arditi et al.'s "actadd"), by default to
  `hook_resid_pre` of one layer; a `Direction` adds `alpha * scale * unit` (scale = the raw mean-difference norm).
- `Ablate(subspace)`: directional ablation (Arditi et al.): remove the subspace from the residual stream at
  every layer (`hook_resid_pre`) and from every write into it (`hook_attn_out`, `hook_mlp_out`), so no
  component can reintroduce it. Equivalent to weight orthogonalisation (see `interp.steering.orthogonalize`).
- `Project(subspace, sites)`: keep only the component inside the subspace at the given sites.
- `Set(site, value, positions)`: overwrite an activation (patching) at prompt positions.
- `RowwiseAdd` / `RowwiseAblate`: a different vector per batch row, for scoring many candidate directions in
  one forward.
- `WeightedAblate(directions, attn, mlp)`: heretic's abliteration as hooks: each layer its own direction, each
  layer's attention and MLP writes their own ablation weight (twin of a weighted `orthogonalized_copy`).
- `Patch(site, source, positions, heads, rows)`: activation patching: per-row source activations from another
  run (per head at `attn.hook_z|q|k|v`), on chosen rows, so many patch locations share one forward.
- `SubspacePatch(site, subspace, source, positions, heads, rows)`: subspace activation patching: only the
  component inside a subspace comes from the source run, x + (source - x) B^T B; the rest of x is kept.
  Same rows, positions and heads as `Patch` (one shared hook); differentiable in a basis tensor (`interp.circuits.das`).

How a shared prefix that runs once for many rows (`interp.core.prefix`) treats each kind is decided there
(`interp.core.prefix.rule`), from the kinds it knows, not from flags an intervention sets about itself: it runs
under the position-independent ones only; position-dependent ones touch only the last `tail` tokens of a
prompt, which the prefix always leaves to the rows; anything it does not know runs without the cache; with a
row-dependent one active, capture, `logits` and `generate` run every prompt in full, in prompt order.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Protocol, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.core.hooks import HookFn, hooked, outside_prefix, tracking_steps
from interp.core.sites import HEAD_KINDS, Site
from interp.core.subspace import Direction, Subspace
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model

ABLATION_KINDS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")


class Intervention(Protocol):
    """What to do at which sites; `interp.core.prefix.rule` says how a prefix cache treats each known kind."""

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]: ...


def _check_vector(model: "Model", v: Tensor, what: str) -> Tensor:
    if not isinstance(v, Tensor):
        raise InterpError(f"{what} must be a torch.Tensor, a Direction or a Subspace, got {type(v).__name__}")
    if v.shape[-1] != model.d_model:
        raise InterpError(f"{what} has width {v.shape[-1]}, but {model.name} has d_model {model.d_model}")
    if not torch.isfinite(v).all():
        raise InterpError(f"{what} contains NaN or inf")
    return v


def _basis(model: "Model", subspace: Subspace | Tensor) -> Tensor:
    if isinstance(subspace, Subspace):
        subspace.check_for(model)
        return subspace.basis
    v = _check_vector(model, subspace, "the subspace")
    return Subspace(v.reshape(-1, v.shape[-1])).basis


class _Cast:
    """Cache a tensor on the device/dtype of the activations it meets."""

    def __init__(self, t: Tensor):
        self.t = t
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def __call__(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self.t.to(device=like.device, dtype=like.dtype)
        return self._cache[key]


def _ablate_fn(basis: Tensor) -> HookFn:
    cast = _Cast(basis)

    def fn(site: Site, x: Tensor) -> Tensor:
        b = cast(x)
        return x - (x @ b.T) @ b

    return fn


def _ablation_sites(layers, kinds: Sequence[str], every_layer: bool) -> list[Site]:
    """With every write into the residual stream ablated, the stream itself only needs it once, at the
    embedding: `hook_resid_pre` of later layers would remove nothing more (saves a third of the hooks)."""
    writes_covered = every_layer and {"hook_attn_out", "hook_mlp_out"} <= set(kinds)
    return [Site(i, k) for i in layers for k in kinds if not (writes_covered and k == "hook_resid_pre" and i > 0)]


@dataclass(frozen=True)
class Add:
    """Add `alpha * vector` at `blocks.{layer}.{kind}` at every position (prompt and generated tokens)."""

    vector: Tensor | Direction
    layer: int
    alpha: float = 1.0
    kind: str = "hook_resid_pre"

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        if isinstance(self.vector, Direction):
            self.vector.check_for(model)
            v = self.vector.vector * (self.vector.scale or 1.0)
        else:
            v = _check_vector(model, self.vector, "the steering vector").reshape(-1)
        site = model.sites(f"blocks.{model.check_layer(self.layer)}.{self.kind}")[0]
        cast = _Cast(self.alpha * v.float())
        return {site: [lambda s, x: x + cast(x)]}


@dataclass(frozen=True)
class Ablate:
    """Directional ablation of a subspace; by default at every layer's residual input and attn/MLP outputs."""

    subspace: Subspace | Tensor
    layers: Sequence[int] | None = None
    kinds: Sequence[str] = ABLATION_KINDS

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        fn = _ablate_fn(_basis(model, self.subspace).float())
        layers = range(model.n_layers) if self.layers is None else [model.check_layer(i) for i in self.layers]
        return {site: [fn] for site in _ablation_sites(layers, self.kinds, self.layers is None)}


@dataclass(frozen=True)
class Project:
    """Keep only the component of the activation inside the subspace, at the given sites."""

    subspace: Subspace | Tensor
    sites: Sequence[str] | str = "hook_resid_post"

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        cast = _Cast(_basis(model, self.subspace).float())

        def fn(site: Site, x: Tensor) -> Tensor:
            b = cast(x)
            return (x @ b.T) @ b

        return {s: [fn] for s in model.sites(self.sites)}


@dataclass(frozen=True)
class Set:
    """Overwrite the activation at `site` with `value` at prompt `positions`: "all", or indices counted from the
    end of the prompt (e.g. [-1]; left padding puts every prompt's end in the last column). `value` is [d], [k, d]
    (one row per position) or [batch, k, d] (one per batch row too). Generated tokens are left alone
    (`interp.core.hooks.tracking_steps` tells them apart from the prompt)."""

    site: str
    value: Tensor
    positions: str | Sequence[int] = "all"

    def __post_init__(self) -> None:
        if isinstance(self.positions, int) and not isinstance(self.positions, bool):
            object.__setattr__(self, "positions", [self.positions])
        if self.positions != "all":
            if isinstance(self.positions, str) or not all(isinstance(p, int) and p < 0 for p in self.positions):
                raise InterpError(f"Set positions must be 'all' or indices counted from the end of the prompt "
                                  f"(negative, e.g. [-1]), got {self.positions!r}")
        if not isinstance(self.value, Tensor) or not 1 <= self.value.dim() <= 3:
            raise InterpError("Set value must be a tensor of shape [d], [k, d] (one row per position) or [batch, k, d]")

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        (site,) = model.sites(self.site)
        cast = _Cast(self.value.float())
        state = model.run_context
        if self.positions == "all":
            idx: slice | list[int] = slice(None)
        else:
            assert not isinstance(self.positions, str)  # "all" is the only string __post_init__ lets through
            idx = list(self.positions)

        def fn(s: Site, x: Tensor) -> Tensor | None:
            if state.decoding:
                return None  # a generation step: only the prompt positions are set
            x = x.clone()
            x[:, idx] = cast(x).expand_as(x[:, idx])
            return x

        return {site: [fn]}


def _check_rows(x: Tensor, n: int, site: Site) -> None:
    if x.shape[0] != n:
        raise InterpError(f"a row-wise intervention for {n} rows met a batch of {x.shape[0]} rows at {site}")


@dataclass(frozen=True)
class RowwiseAblate:
    """Ablate a different unit direction from each batch row ([batch, d]), at every layer (as `Ablate`)."""

    directions: Float[Tensor, "batch d"]
    kinds: Sequence[str] = ABLATION_KINDS

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        d = _check_vector(model, self.directions, "the row-wise directions").float()
        cast = _Cast(d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12))

        def fn(site: Site, x: Tensor) -> Tensor:
            _check_rows(x, d.shape[0], site)
            r = cast(x).unsqueeze(1)  # [b, 1, d]
            return x - (x * r).sum(-1, keepdim=True) * r

        return {site: [fn] for site in _ablation_sites(range(model.n_layers), self.kinds, True)}


@dataclass(frozen=True)
class RowwiseAdd:
    """Add `vectors[r]` to row r at `blocks.{layers[r]}.{kind}` (each row its own vector and layer)."""

    vectors: Float[Tensor, "batch d"]
    layers: Sequence[int]
    kind: str = "hook_resid_pre"

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        v = _check_vector(model, self.vectors, "the row-wise vectors").float()
        if len(self.layers) != v.shape[0]:
            raise InterpError(f"got {len(self.layers)} layers for {v.shape[0]} row vectors")
        layers = torch.tensor([model.check_layer(int(i)) for i in self.layers])
        out: dict[Site, list[HookFn]] = {}
        for layer in sorted(set(layers.tolist())):
            cast = _Cast(v * (layers == layer).unsqueeze(-1).float())

            def fn(site: Site, x: Tensor, cast=cast) -> Tensor:
                _check_rows(x, v.shape[0], site)
                return x + cast(x).unsqueeze(1)

            out[Site(layer, self.kind)] = [fn]
        return out


@dataclass(frozen=True)
class WeightedAblate:
    """Per-layer, per-component weighted directional ablation (heretic's abliteration, as hooks):
    out <- out - w (out . r_l) r_l at `blocks.{l}.hook_attn_out` (weight `attn[l]`) and `hook_mlp_out` (`mlp[l]`),
    with r_l the unit direction of layer l (`directions` [n_layers, d], normalised here). The residual stream
    itself is left alone (no embedding edit). Layers whose weight is 0 get no hook. The weight-edit twin is
    `interp.steering.orthogonalize.orthogonalized_copy(model, directions, weights={"attn": ..., "mlp": ...})`."""

    directions: Float[Tensor, "layer d"]
    attn: Sequence[float]
    mlp: Sequence[float]

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        d = _check_vector(model, self.directions, "the per-layer directions").float()
        n = model.n_layers
        if d.dim() != 2 or d.shape[0] != n:
            raise InterpError(f"WeightedAblate needs one direction per layer, shape [{n}, {model.d_model}], "
                              f"got {tuple(d.shape)}")
        for name, ws in (("attn", self.attn), ("mlp", self.mlp)):
            if len(ws) != n:
                raise InterpError(f"WeightedAblate {name} weights: {len(ws)} given, {model.name} has {n} layers")
        if (d.norm(dim=-1) == 0).any():
            raise InterpError("WeightedAblate: a per-layer direction is the zero vector")
        units = d / d.norm(dim=-1, keepdim=True)
        out: dict[Site, list[HookFn]] = {}
        for kind, weights in (("hook_attn_out", self.attn), ("hook_mlp_out", self.mlp)):
            for layer, w in enumerate(weights):
                if float(w) == 0.0:
                    continue
                cast = _Cast(units[layer])

                def fn(site: Site, x: Tensor, cast=cast, w=float(w)) -> Tensor:
                    r = cast(x)
                    return x - w * (x @ r)[..., None] * r

                out[Site(layer, kind)] = [fn]
        return out


def _patch_positions(name: str, positions) -> str | list[int]:
    """`positions` of a patch, normalised: "all", or a non-empty list of indices counted from the end."""
    if isinstance(positions, int) and not isinstance(positions, bool):
        positions = [positions]
    if positions != "all":
        if isinstance(positions, str) or not positions or \
                not all(isinstance(p, int) and p < 0 for p in positions):
            raise InterpError(f"{name} positions must be 'all' or indices counted from the end of the prompt "
                              f"(negative, e.g. [-1]), got {positions!r}")
        positions = list(positions)
    return positions


def _check_source(name: str, source, rows) -> None:
    if not isinstance(source, Tensor) or source.dim() < 3:
        raise InterpError(f"{name} source must be a tensor [batch, pos, d] (or [batch, pos, head, d_head] per head)")
    if rows is not None and len(rows) != source.shape[0]:
        raise InterpError(f"{name} has {source.shape[0]} source rows for {len(rows)} batch rows; give one per row")


def site_width(model: "Model", site: Site) -> int:
    """The width of one activation vector at `site`: d_head per head, the MLP's hidden width at `mlp.hook_post`,
    a linear layer's in/out features at a native site on one, else d_model. Raises InterpError for a native site
    whose width cannot be read from its module."""
    if site.native:
        module, _ = model.site_module(site)
        width = getattr(module, "in_features" if site.kind == "input" else "out_features", None)
        if not isinstance(width, int):
            raise InterpError(f"the width of the native site {site} cannot be read from its module "
                              f"({type(module).__name__}); use a site on a linear layer or a canonical site")
        return width
    if site.kind in HEAD_KINDS:
        return model.d_head
    if site.kind == "mlp.hook_post":
        w: Tensor = model.layers[site.layer].get_submodule(model.family.down_proj).weight  # type: ignore[assignment]
        return w.shape[0] if model.family.conv1d else w.shape[1]
    return model.d_model


def check_subspace(model: "Model", subspace: Subspace, site: Site, width: int | None = None) -> None:
    """Raise InterpError unless `subspace` can be patched at `site` of `model`: its width is the site's, it was not
    fitted on another model (provenance "model"), nor at another site (provenance "site")."""
    width = site_width(model, site) if width is None else width
    what = "direction" if subspace.k == 1 else f"subspace (k={subspace.k})"
    if subspace.d != width:
        raise InterpError(f"a {what} of width {subspace.d} cannot be patched at {site}, whose activations are {width} "
                          f"wide; fit it at that site of {model.name}")
    fp = subspace.provenance.get("model")
    if isinstance(fp, dict) and fp:
        model.check_compatible(fp, f"this {what}")
    fitted = subspace.provenance.get("site")
    if isinstance(fitted, str) and fitted != site.name:
        raise InterpError(f"this {what} was fitted at {fitted}, not at {site}; patch it at {fitted} "
                          f"(or fit one at {site})")


def _patch_fn(model: "Model", name: str, site: Site, source: Tensor, positions: str | Sequence[int],
              heads: Sequence[int] | None, rows: Sequence[int] | None,
              combine: Callable[[Tensor, Tensor], Tensor] | None) -> HookFn:
    """The one hook of `Patch` and `SubspacePatch`: it finds the rows, positions (and heads) written and sets
    them to `combine(destination, source)` there (`combine=None`: the source itself, bit for bit)."""
    per_head = site.kind in HEAD_KINDS
    src = source.detach()
    if per_head != (src.dim() == 4) or src.dim() > 4:
        want = "[batch, pos, head, d_head]" if per_head else "[batch, pos, d]"
        raise InterpError(f"{name} source for {site} must be {want}, got shape {tuple(src.shape)}")
    if per_head:
        n_heads = src.shape[2]
        heads = list(range(n_heads)) if heads is None else list(heads)
        bad = [h for h in heads if not isinstance(h, int) or not 0 <= h < n_heads]
        if bad or not heads:
            raise InterpError(f"{name} heads {bad or heads} out of range: {site} has heads 0..{n_heads - 1}")
    elif heads is not None:
        raise InterpError(f"{name} heads apply to attn.hook_z|q|k|v only, not {site}")
    per_position = positions != "all" and src.shape[1] == len(positions)
    state = model.run_context
    row_index = None if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    cast = _Cast(src)

    def fn(s: Site, x: Tensor) -> Tensor | None:
        if state.decoding:
            return None  # a generation step: only the prompt positions are patched
        n, width = x.shape[0], x.shape[1]
        r = torch.arange(n, device=x.device) if row_index is None else row_index.to(x.device)
        if len(r) != src.shape[0] or (len(r) and int(r.max()) >= n):
            raise InterpError(f"a {name} for {src.shape[0]} rows met a batch of {n} rows at {s}")
        if positions == "all":
            cols = torch.arange(width, device=x.device)
        else:
            assert not isinstance(positions, str)  # "all" is the only string `_patch_positions` lets through
            if -min(positions) > width:
                raise InterpError(f"{name} position {min(positions)} is outside this run's {width} tokens at {s}")
            cols = torch.tensor(positions, device=x.device) + width
        value = cast(x)  # per_position: [rows, len(positions), ...] as it is
        if not per_position:
            if value.shape[1] < width:
                raise InterpError(f"{name} source has {value.shape[1]} positions, the run at {s} has {width}")
            value = value[:, cols - width + value.shape[1]]
        if heads is None:
            index: tuple[Tensor, ...] = (r[:, None], cols[None, :])
        else:
            h = torch.tensor(heads, device=x.device)
            index, value = (r[:, None, None], cols[None, :, None], h[None, None, :]), value[:, :, h]
        x = x.clone()
        x[index] = value if combine is None else combine(x[index], value)
        return x

    return fn


@dataclass(frozen=True)
class Patch:
    """Activation patching: write per-row `source` activations (captured from another run, e.g. the clean one)
    into this run at `site` and prompt `positions`.

    positions: "all", or indices counted from the end of the prompt (negative; left padding puts every prompt's
    end in the last column). source: [batch, pos, ...] a whole run's activations aligned at the last column
    (its last columns meet the run's; wider is fine), or [batch, len(positions), ...] one entry per position
    (a source exactly len(positions) wide is read this way). `...` is [d] for residual-width sites and
    [head, d_head] for `attn.hook_z|q|k|v`, where `heads` picks the heads written (default: all).
    rows: the batch rows written, source row i going to batch row rows[i] (default: every row, in order), so
    several patches can share one forward, each on its own rows. Generated tokens are left alone.
    Writing a run's own activations back changes nothing, bit for bit.
    """

    site: str
    source: Tensor
    positions: str | Sequence[int] = "all"
    heads: Sequence[int] | None = None
    rows: Sequence[int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _patch_positions("Patch", self.positions))
        _check_source("Patch", self.source, self.rows)

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        (site,) = model.sites(self.site)
        return {site: [_patch_fn(model, "Patch", site, self.source, self.positions, self.heads, self.rows, None)]}


def patch_component(dest: Float[Tensor, "... d"], source: Float[Tensor, "... d"],
                    basis: Float[Tensor, "k d"]) -> Float[Tensor, "... d"]:
    """`dest` with its component inside the span of the orthonormal rows of `basis` replaced by `source`'s:
    dest + (source - dest) B^T B. The part of `dest` orthogonal to the subspace is kept; k = 0 keeps all of it.
    Differentiable in `basis` (DAS trains a basis through it); computed in float32 or wider, returned in
    `dest`'s dtype."""
    dtype = torch.promote_types(dest.dtype, torch.float32)
    b = basis.to(dest.device, dtype)
    d = dest.to(dtype)
    return (d + ((source.to(dtype) - d) @ b.T) @ b).to(dest.dtype)


def _orthonormal_rows(name: str, basis: Tensor, width: int, site: Site) -> Tensor:
    if basis.dim() != 2 or basis.shape[1] != width:
        raise InterpError(f"{name} basis must be [k, {width}] at {site} (k orthonormal rows, k may be 0), "
                          f"got shape {tuple(basis.shape)}")
    if basis.shape[0] > width:
        raise InterpError(f"{name} basis has {basis.shape[0]} rows, but at most {width} orthonormal directions fit "
                          f"in the {width} dimensions of {site}")
    with torch.no_grad():
        b = basis.detach().double()
        off = (b @ b.T - torch.eye(b.shape[0], dtype=b.dtype, device=b.device)).abs().max() if len(b) else 0.0
    if not torch.isfinite(basis.detach()).all() or off > 1e-4:
        raise InterpError(f"{name} basis rows are not orthonormal (largest error {float(off):.2g}); "
                          f"pass Subspace(rows) to orthonormalise them")
    return basis


@dataclass(frozen=True)
class SubspacePatch:
    """Subspace activation patching: replace only the component of this run's activation inside `subspace` by the
    `source` run's component there, x + (source - x) B^T B (B: the orthonormal [k, d] basis), keeping the part
    orthogonal to the subspace. Per head (`attn.hook_z|q|k|v`) d = d_head and B acts on each chosen head's slice.

    subspace: a `Subspace` (checked against the model and the site: width, provenance "model" and "site"), or a
    [k, d] tensor of orthonormal rows (k = 0: an empty subspace, which changes nothing). A tensor that requires
    grad stays in the graph (DAS trains a basis through this hook). The full basis gives `Patch`'s result (to float
    rounding). site, source, positions, heads, rows: as `Patch` (one shared implementation)."""

    site: str
    subspace: Subspace | Tensor
    source: Tensor
    positions: str | Sequence[int] = "all"
    heads: Sequence[int] | None = None
    rows: Sequence[int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _patch_positions("SubspacePatch", self.positions))
        _check_source("SubspacePatch", self.source, self.rows)
        if not isinstance(self.subspace, (Subspace, Tensor)):
            raise InterpError(f"SubspacePatch subspace must be a Subspace or a [k, d] tensor of orthonormal rows, "
                              f"got {type(self.subspace).__name__}")

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        (site,) = model.sites(self.site)
        width = site_width(model, site)
        if isinstance(self.subspace, Subspace):
            check_subspace(model, self.subspace, site, width)
            basis = self.subspace.basis
        else:
            basis = _orthonormal_rows("SubspacePatch", self.subspace, width, site)
        if self.source.shape[-1] != width:
            raise InterpError(f"SubspacePatch source is {self.source.shape[-1]} wide, {site} is {width} wide")
        combine = lambda dest, src: patch_component(dest, src, basis)  # noqa: E731
        return {site: [_patch_fn(model, "SubspacePatch", site, self.source, self.positions, self.heads, self.rows,
                                 combine)]}


def merge_hooks(model: "Model", interventions: Sequence[Intervention]) -> dict[Site, list[HookFn]]:
    merged: dict[Site, list[HookFn]] = {}
    for iv in interventions:
        if not hasattr(iv, "hooks"):
            raise InterpError(f"{iv!r} is not an intervention (Add, Ablate, Project, Set, Patch, SubspacePatch, RowwiseAdd, RowwiseAblate)")
        for site, fns in iv.hooks(model).items():
            if site.kind in ("hook_resid_mid", "attn.hook_pattern"):
                raise InterpError(f"cannot intervene at {site}: it is read-only here; intervene at hook_attn_out or hook_resid_pre instead")
            fns = [outside_prefix(model, fn, id(iv)) for fn in fns]  # a prefix pass says if it acts (interp.core.prefix)
            merged.setdefault(site, []).extend(fns)
    return merged


@contextmanager
def applied(model: "Model", interventions: Sequence[Intervention]) -> Iterator[None]:
    """Hooks for these interventions inside the block; removed on exit, also when the body raises. While the
    block runs, the model's `run_context` lists them and tells prompt forwards from generation steps."""
    hooks = merge_hooks(model, interventions)
    state = model.run_context
    n = len(state.active)
    state.active.extend(interventions)
    try:
        with tracking_steps(model), hooked(model, hooks, require_fired=True):
            yield
    finally:
        del state.active[n:]
