"""Activation patching, attribution patching and path patching, batched: many patch locations per forward.

Every function here takes a task's checked token ids (`interp.circuits.tasks.TaskTokens`: clean and corrupted prompts of
the same token length, one-token answers) and measures the logit difference `logit[answer] - logit[wrong]` at
the last position, normalised so that the clean run scores 1 and the corrupted run 0 (`interp.circuits.tasks.normalise`
of the mean over items). A grid cell is the normalised metric of the *corrupted* run with one location's
activation taken from the *clean* run (denoising: how much of the clean behaviour this location restores).

`prepare` runs the clean and the corrupted prompts once each, keeping the activations of the sites asked for
at every position (left-padded to one width, so positions line up at the last column) and the corrupted run's
keys and values. A sweep then stacks rows (location, item), location by location, and runs `rows_per_forward`
of them per forward, each row with its own `Patch` (`rows=`): a sweep of P locations over n items costs about
P * n / rows_per_forward forwards, not P. Two savings on top, both exact:

- only the last position's logits are computed (`logits_to_keep=1`);
- a patch at position p cannot change positions before p (attention is causal), so a row patched at p continues
  the corrupted run's keys and values of its first p tokens (`interp.core.prefix.PrefixKV`, as the prefix cache does)
  and runs only its tokens from p on. Rows are grouped by how many tokens they run, so a forward holds rows of
  one length;
- a patch at layer L cannot change layers below L, so a forward whose rows are all patched at layer L or above
  starts at layer L, from the corrupted run's `hook_resid_pre` of layer L (`_from_layer`: the decoder runs only
  layers L..; rotary embeddings and masks come from the model's own forward). Within a length, rows are ordered
  by layer, so a forward holds rows of nearby layers. Done for the families whose forward adds nothing between
  the embedding and the first layer (Llama, Qwen2, Mistral); elsewhere every forward starts at layer 0.

`one_location_per_forward=True` is the loop a TransformerLens tutorial writes: one location per forward (the
items batched), the whole prompt (last-position logits only, to compare like with like); it gives the same
numbers (the test checks 1e-4).

Attribution patching (Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale") estimates
every cell from one clean forward, one corrupted forward and one backward of the metric on the corrupted run:
effect(location) ~ (clean - corrupted activation) . d metric / d activation, summed over the location's
positions (and its head's d_head), averaged over items, divided by (clean - corrupted) metric.

Path patching (Wang et al. 2022, "Interpretability in the Wild"), `path_patching`: the effect of a sender head on
receiver heads through their queries, keys or values only. Three runs per sender, all on the corrupted prompts:
1. the clean run's `attn.hook_z` of the sender (prepared once);
2. the corrupted prompts with the sender's z set to its clean value and *every other head's z in every layer
   below the receivers frozen* to its corrupted value; MLPs recompute (so the sender's effect reaches the
   receivers directly and through MLPs, not through other heads, as in Wang et al. and the ARENA notebooks);
   the receivers' `attn.hook_q|k|v` are recorded there (the forward stops after the deepest receiver layer);
3. the corrupted prompts with only the receivers' q, k or v replaced by the values of run 2; everything else
   (the receivers' other inputs, every later layer) recomputes as in the corrupted run; its logit difference,
   normalised, is the sender's effect through that path.
Under grouped-query attention a key/value head is shared by a group of query heads: patching the keys or
values of a receiver patches its whole group's. Senders are batched like the sweeps (rows: sender x item).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.circuits.tasks import TaskTokens, logit_diff, normalise
from interp.core.capture import pad_left
from interp.core.interventions import Patch
from interp.core.prefix import PrefixKV, sliding_window
from interp.core.runner import forward
from interp.core.sites import Site, check_head
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.hooks import HookFn
    from interp.core.model import Model
    from interp.core.progress import Progress

GRIDS: dict[str, str] = {"resid": "hook_resid_pre", "attn": "hook_attn_out", "mlp": "hook_mlp_out",
                         "heads": "attn.hook_z"}


@dataclass(frozen=True)
class Location:
    """One patch location: a site, a position counted from the end (None: every position), a head (or None)."""

    site: Site
    position: int | None = None
    head: int | None = None


@dataclass
class Runs:
    """The clean and corrupted runs a sweep patches between: activations [n, width, ...] left-padded to the
    longest prompt (positions line up at the last column), per-item logit differences, the corrupted keys and
    values [n, kv_heads, width, d_head] per layer."""

    tokens: TaskTokens
    width: int
    clean: dict[Site, Tensor]
    corrupted: dict[Site, Tensor]
    clean_ld: Float[Tensor, "n"]
    corrupted_ld: Float[Tensor, "n"]
    kv: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.tokens.clean)

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.tokens.corrupted]

    def normalised(self, mean_ld: Tensor) -> Tensor:
        """The mean logit difference of patched runs, as a share of the clean - corrupted gap."""
        return normalise(mean_ld, self.clean_ld.mean(), self.corrupted_ld.mean())


def check_tokens(model: "Model", tokens: TaskTokens) -> None:
    """Clean and corrupted prompts pairwise of the same length, one answer and wrong answer per item."""
    n = len(tokens.clean)
    if n == 0 or len(tokens.corrupted) != n or len(tokens.answer) != n or len(tokens.wrong) != n:
        raise InterpError(f"got {n} clean, {len(tokens.corrupted)} corrupted prompts, {len(tokens.answer)} answers "
                          f"and {len(tokens.wrong)} wrong answers; give one of each per item (at least one item)")
    for i, (a, b) in enumerate(zip(tokens.clean, tokens.corrupted)):
        if len(a) != len(b):
            raise InterpError(f"item {i}: the clean prompt is {len(a)} tokens and the corrupted one {len(b)}; "
                              "patching needs pairs of the same token length")


def _forward_keep(model: "Model", ids: list[list[int]], sites: Sequence[Site], width: int, batch_size: int,
                  keep_kv: bool) -> tuple[dict[Site, Tensor], Tensor, list[tuple[Tensor, Tensor]]]:
    """Activations at `sites` (every position, padded to `width`), last-position logits, and optionally the
    keys and values, of plain forwards over `ids`."""
    acts: dict[Site, list[Tensor]] = {s: [] for s in sites}
    logits, kvs = [], []
    for start in range(0, len(ids), batch_size):
        batch = model.pad(ids[start:start + batch_size])
        got: dict[Site, Tensor] = {}
        fns: dict[Site, list[HookFn]] = {s: [lambda site, x: got.__setitem__(site, x.detach().float().cpu())] for s in sites}
        out = forward(model, batch, hooks=fns, keep_cache=keep_kv)
        cache = out.cache
        assert out.logits is not None  # logits were asked for and the forward ran to the end
        logits.append(out.logits.float().cpu())
        for s in sites:
            acts[s].append(pad_left(got[s], width, [1]))
        if keep_kv:
            kvs.append([(pad_left(layer.keys, width, [2]), pad_left(layer.values, width, [2])) for layer in cache.layers])
    kv = [(torch.cat([k[i][0] for k in kvs]), torch.cat([k[i][1] for k in kvs])) for i in range(len(kvs[0]))] if keep_kv else []
    return {s: torch.cat(v) for s, v in acts.items()}, torch.cat(logits), kv


@torch.no_grad()
def prepare(model: "Model", tokens: TaskTokens, sites: Sequence[Site] = (), batch_size: int = 16,
            corrupted_sites: Sequence[Site] | None = None) -> Runs:
    """Run the clean and the corrupted prompts once, keeping `sites` at every position from the clean run
    (and `corrupted_sites`, by default the same, from the corrupted run) and the corrupted keys and values."""
    check_tokens(model, tokens)
    width = max(len(r) for r in tokens.clean)
    clean, clean_logits, _ = _forward_keep(model, tokens.clean, list(sites), width, batch_size, False)
    csites = list(sites) if corrupted_sites is None else list(corrupted_sites)
    # every layer's residual input, from which a forward of rows patched at layer L and above starts (`sweep`)
    csites += [s for s in (Site(i, "hook_resid_pre") for i in range(model.n_layers)) if s not in csites]
    corrupted, corr_logits, kv = _forward_keep(model, tokens.corrupted, csites, width, batch_size, True)
    return Runs(tokens, width, clean, corrupted, logit_diff(clean_logits, tokens.answer, tokens.wrong),
                logit_diff(corr_logits, tokens.answer, tokens.wrong), kv)


# ----- locations -----

def check_heads(model: "Model", heads: Sequence[tuple[int, int]], what: str = "head") -> list[tuple[int, int]]:
    """(layer, head) pairs, validated against the model."""
    out = []
    for item in heads:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InterpError(f"a {what} is a (layer, head) pair, got {item!r}")
        out.append(check_head(int(item[0]), int(item[1]), model.n_layers, model.n_heads, what))
    return out


def grid_locations(model: "Model", grid: str, n_positions: int, layers: Sequence[int] | None = None,
                   position: int | None = None) -> list[Location]:
    """The locations of one grid, layer-major: resid/attn/mlp: (layer, position) for the last `n_positions`
    positions; heads: (layer, head) at every position, or at `position` (counted from the end) only."""
    if grid not in GRIDS:
        raise InterpError(f"unknown grid {grid!r}; choose from {', '.join(GRIDS)}")
    layers = range(model.n_layers) if layers is None else [model.check_layer(int(i)) for i in layers]
    kind = GRIDS[grid]
    if grid == "heads":
        return [Location(Site(i, kind), position, h) for i in layers for h in range(model.n_heads)]
    return [Location(Site(i, kind), p) for i in layers for p in range(-n_positions, 0)]


# ----- the batched sweep -----

def _prefix_rows(model: "Model", runs: Runs, items: list[int], cuts: list[int]) -> PrefixKV:
    """The corrupted run's keys and values of the first `cuts[r]` tokens of item `items[r]`, left-padded."""
    width = max(cuts)
    cols = torch.arange(width)
    lengths = torch.tensor([runs.lengths[i] for i in items])
    cut = torch.tensor(cuts)
    # row r's first token sits in column runs.width - lengths[r]; its cut tokens end in column width - 1 here
    src = (runs.width - lengths + cut - width)[:, None] + cols[None]
    valid = cols[None] >= (width - cut)[:, None]
    src = src.clamp(0, runs.width - 1)
    kv = []
    for k, v in runs.kv:
        idx = src[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3]).to(k.device)
        keep = valid[:, None, :, None].to(k.device)
        k_rows, v_rows = (torch.gather(t[items], 2, idx) * keep for t in (k, v))
        kv.append((k_rows, v_rows))
    assert model.pad_id is not None  # the runs were padded with it (`Model.pad`)
    pad = torch.full((len(items), width), model.pad_id, dtype=torch.long)
    return PrefixKV(pad, cut, kv, model.hf.config)


SKIPS_LAYERS = ("llama", "qwen2", "mistral")  # forwards that add nothing between the embedding and layer 0


@contextmanager
def _from_layer(model: "Model", start: int) -> Iterator[None]:
    """Inside the block the decoder runs layers `start`.. only: its layer list is swapped for that tail (the
    same modules, hooks and all; each layer keeps its own cache index) and restored on exit. The caller feeds
    the residual stream at layer `start` as `inputs_embeds`."""
    if start == 0:
        yield
        return
    parent_path, _, name = model.family.layers.rpartition(".")
    parent = model.hf.get_submodule(parent_path)
    full = getattr(parent, name)
    setattr(parent, name, nn.ModuleList(list(full)[start:]))
    try:
        yield
    finally:
        setattr(parent, name, full)


def _rows_inputs(model: "Model", runs: Runs, items: list[int], cuts: list[int], start: int = 0) -> dict:
    """The `interp.core.runner.forward` arguments for corrupted-run rows (item `items[r]`, running its tokens from
    `cuts[r]` on, the first
    `cuts[r]` tokens continued from the corrupted keys and values), for a forward that starts at layer `start`
    (inside `_from_layer`; the corrupted residual stream at that layer is fed as `inputs_embeds`)."""
    batch = model.pad([runs.tokens.corrupted[i][c:] for i, c in zip(items, cuts)])
    prefix = _prefix_rows(model, runs, items, cuts) if max(cuts) > 0 else None
    rows = torch.arange(len(items)) if prefix is not None else None
    if start == 0:
        return {"batch": batch, "prefix": prefix, "rows": rows}
    inputs = prefix.inputs(batch, rows=rows) if prefix is not None else batch.inputs()
    # the corrupted residual stream at layer `start`, at the positions each row runs
    resid = runs.corrupted[Site(start, "hook_resid_pre")]
    width = batch.input_ids.shape[1]
    embeds = torch.zeros(len(items), width, resid.shape[-1])
    for r, (i, c) in enumerate(zip(items, cuts)):
        k = runs.lengths[i] - c
        embeds[r, width - k:] = resid[i, runs.width - k:]
    return {"inputs_embeds": embeds.to(model.device, model.dtype), "attention_mask": inputs["attention_mask"],
            "position_ids": inputs["position_ids"], "cache": inputs.get("past_key_values")}


def _rows_forward(model: "Model", runs: Runs, rows: list[tuple[int, int]], locations: list[Location],
                  reuse_prefix: bool, start: int = 0) -> Tensor:
    """Logit differences of `rows` (location index, item) of the corrupted run, each with its location's clean
    activation patched in, in one forward that starts at layer `start` (no row may be patched below it)."""
    items = [i for _, i in rows]
    groups: dict[int, list[int]] = {}
    for r, (loc, _) in enumerate(rows):
        groups.setdefault(loc, []).append(r)
    patches = []
    for loc, rs in groups.items():
        where = locations[loc]
        source = runs.clean[where.site][[items[r] for r in rs]]
        positions = "all" if where.position is None else [where.position]
        heads = None if where.head is None else [where.head]
        patches.append(Patch(where.site.name, source, positions, heads=heads, rows=rs))
    cuts = [runs.lengths[i] + p if (p := locations[loc].position) is not None else 0 for loc, i in rows]
    if not reuse_prefix:
        cuts = [0] * len(rows)
    inputs = _rows_inputs(model, runs, items, cuts, start)
    with _from_layer(model, start):
        out = forward(model, **inputs, edits=patches).logits
    assert out is not None  # logits were asked for and the forward ran to the end
    logits = out.float().cpu()
    index = torch.tensor(items)
    return logit_diff(logits, runs.tokens.answer[index], runs.tokens.wrong[index])


@torch.no_grad()
def sweep(model: "Model", runs: Runs, locations: Sequence[Location], rows_per_forward: int = 64,
          one_location_per_forward: bool = False, progress: "Progress | None" = None,
          key: str = "sweep") -> Float[Tensor, "loc"]:
    """The normalised metric with each location patched from the clean run, one value per location.

    Rows (location, item) share forwards, `rows_per_forward` at a time; each row runs only its tokens from the
    patched position on (see the module docstring). `one_location_per_forward=True`: the plain loop, one
    location per forward over whole prompts (the items batched), for comparison; same numbers. `progress`
    (`interp.core.progress.Progress`): each forward's logit differences are the recorded unit f"{key}/{i}", so
    a resumed sweep runs only the forwards not recorded and sums the same values in the same order."""
    locations = list(locations)
    if not locations:
        raise InterpError("no patch locations given; name at least one")
    if rows_per_forward < 1:
        raise InterpError(f"rows_per_forward must be a positive integer, got {rows_per_forward!r}")
    for where in locations:
        if where.site not in runs.clean:
            raise InterpError(f"{where.site} was not prepared; pass it to prepare(sites=...)")
        if where.position is not None and -where.position > min(runs.lengths):
            raise InterpError(f"position {where.position} is outside the shortest prompt ({min(runs.lengths)} tokens)")
    n = runs.n
    window = sliding_window(model)
    reuse = not one_location_per_forward and (window is None or runs.width <= window)
    total = torch.zeros(len(locations))
    if one_location_per_forward:
        chunks = [[(loc, i) for i in range(s, min(s + rows_per_forward, n))]
                  for loc in range(len(locations)) for s in range(0, n, rows_per_forward)]
    else:
        rows = [(loc, i) for loc in range(len(locations)) for i in range(n)]

        def run_length(row: tuple[int, int]) -> int:  # tokens the row runs: from the patched position on
            p = locations[row[0]].position
            return runs.lengths[row[1]] if p is None else -p

        rows.sort(key=lambda r: (-run_length(r), locations[r[0]].site.layer))
        chunks = [group[s:s + rows_per_forward] for _, rows_of in itertools.groupby(rows, key=run_length)
                  for group in [list(rows_of)] for s in range(0, len(group), rows_per_forward)]
    skip = not one_location_per_forward and model.hf.config.model_type in SKIPS_LAYERS
    for c, chunk in enumerate(chunks):
        start = min(locations[loc].site.layer for loc, _ in chunk) if skip else 0
        if progress is None:
            ld = _rows_forward(model, runs, chunk, locations, reuse, start)
        else:  # float32 values: exact through JSON
            ld = torch.tensor(progress.unit(f"{key}/{c}", lambda: _rows_forward(
                model, runs, chunk, locations, reuse, start).tolist()), dtype=torch.float32)
        total.index_add_(0, torch.tensor([loc for loc, _ in chunk]), ld)
    return runs.normalised(total / n)


# ----- attribution patching -----

def attribution(model: "Model", runs: Runs, locations: Sequence[Location], batch_size: int = 16) -> Float[Tensor, "loc"]:
    """Attribution-patching estimates of `sweep(model, runs, locations)`: one backward of the metric on the
    corrupted run (`prepare` already ran the clean and corrupted forwards), normalised the same way."""
    sites = sorted({where.site for where in locations})
    for s in sites:
        if s not in runs.clean or s not in runs.corrupted:
            raise InterpError(f"{s} was not prepared from both runs; pass it to prepare(sites=...)")
    grads: dict[Site, list[Tensor]] = {s: [] for s in sites}
    ids, tok = runs.tokens.corrupted, runs.tokens
    for start in range(0, runs.n, batch_size):
        batch = model.pad(ids[start:start + batch_size])
        slots: dict[Site, Tensor] = {}

        def leaf(site: Site, x: Tensor) -> Tensor:  # the embedding becomes a leaf, so the graph exists
            return x.detach().requires_grad_(True)

        def record(site: Site, x: Tensor) -> Tensor:
            y = x.clone()  # the module consumes y, so y's gradient is the site's
            y.register_hook(lambda g, site=site: slots.__setitem__(site, g.detach().float().cpu()))
            return y

        fns: dict[Site, list] = {Site(0, "hook_resid_pre"): [leaf]}
        for s in sites:
            fns.setdefault(s, []).append(record)
        with torch.enable_grad():
            result = forward(model, batch, hooks=fns).logits
            assert result is not None  # logits were asked for and the forward ran to the end
            logits = result.float()
            index = slice(start, start + batch.input_ids.shape[0])
            logit_diff(logits, tok.answer[index], tok.wrong[index]).sum().backward()
        for s in sites:
            grads[s].append(pad_left(slots[s], runs.width, [1]))
    out = torch.empty(len(locations))
    for j, where in enumerate(locations):
        delta = (runs.clean[where.site] - runs.corrupted[where.site]) * torch.cat(grads[where.site])
        if where.head is not None:
            delta = delta[:, :, where.head]
        delta = delta if where.position is None else delta[:, where.position]
        out[j] = delta.sum() / runs.n
    return out / (runs.clean_ld.mean() - runs.corrupted_ld.mean())


# ----- path patching -----

Senders = Sequence[tuple[int, int] | Sequence[tuple[int, int]]]


@torch.no_grad()
def path_patching(model: "Model", tokens: TaskTokens, senders: Senders, receivers: Sequence[tuple[int, int]],
                  via: str = "q", rows_per_forward: int = 64, runs: Runs | None = None) -> Float[Tensor, "senders"]:
    """The normalised effect of each sender (a (layer, head), or a list of them patched together; [] = none) on
    the `receivers` (layer, head) through their queries (`via="q"`), keys ("k") or values ("v") only: the
    procedure in the module docstring. Every sender must sit in a layer below the deepest receiver."""
    if via not in ("q", "k", "v"):
        raise InterpError(f"via={via!r}; path patching goes through the receivers' queries 'q', keys 'k' or values 'v'")
    groups = [check_heads(model, [s] if isinstance(s, tuple) else list(s), "sender head") for s in senders]
    recv = check_heads(model, receivers, "receiver head")
    if not groups or not recv:
        raise InterpError("path patching needs at least one sender (a (layer, head), or [] for none) and one receiver")
    top = max(layer for layer, _ in recv)
    if any(layer >= top for g in groups for layer, _ in g):
        raise InterpError(f"every sender must sit in a layer below the deepest receiver (layer {top})")
    z_sites = [Site(i, "attn.hook_z") for i in range(top)]
    if runs is None or any(s not in runs.clean or s not in runs.corrupted for s in z_sites):
        runs = prepare(model, tokens, z_sites)
    kind = f"attn.hook_{via}"
    group_size = model.n_heads // (model.hf.config.num_key_value_heads or model.n_heads) if via != "q" else 1
    recv_heads: dict[Site, list[int]] = {}
    for layer, head in recv:
        heads = recv_heads.setdefault(Site(layer, kind), [])
        if head // group_size not in heads:
            heads.append(head // group_size)
    n = runs.n
    rows = [(g, i) for g in range(len(groups)) for i in range(n)]
    total = torch.zeros(len(groups))
    for s in range(0, len(rows), rows_per_forward):
        chunk = rows[s:s + rows_per_forward]
        items = [i for _, i in chunk]
        batch = model.pad([runs.tokens.corrupted[i] for i in items])
        # run 2: every head below the receivers frozen to the corrupted run, the sender's set to the clean run
        frozen = []
        for site in z_sites:
            src = runs.corrupted[site][items].clone()
            for r, (g, i) in enumerate(chunk):
                for layer, head in groups[g]:
                    if layer == site.layer:
                        src[r, :, head] = runs.clean[site][i, :, head]
            frozen.append(Patch(site.name, src))
        got: dict[Site, Tensor] = {}
        keep: dict[Site, list[HookFn]] = {site: [lambda st, x: got.__setitem__(st, x.detach().clone())] for site in recv_heads}
        forward(model, batch, hooks=keep, edits=frozen, stop_after=top, logits=None)
        # run 3: only the receivers' q/k/v from run 2
        patches = [Patch(site.name, got[site], "all", heads=heads) for site, heads in recv_heads.items()]
        out = forward(model, batch, edits=patches).logits
        assert out is not None  # logits were asked for and the forward ran to the end
        logits = out.float().cpu()
        index = torch.tensor(items)
        ld = logit_diff(logits, runs.tokens.answer[index], runs.tokens.wrong[index])
        total.index_add_(0, torch.tensor([g for g, _ in chunk]), ld)
    return runs.normalised(total / n)


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two equally long value lists (nan when either is constant)."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else float("nan")
