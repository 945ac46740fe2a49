"""Losses for the token search: three subspace-rerouting (SSR) losses and GCG's target cross-entropy.

Winninger, Addad and Kapusta (2025), "Using Mechanistic Interpretability to Craft Adversarial Attacks against
Large Language Models", minimise  L(s) = sum_k alpha_k d_k(e_k, E_k): the distance of the activations e_k
at chosen layers (or heads) to a target subspace E_k, e.g. the "acceptance" side of a harmful/harmless
boundary. Every SSR loss reads the residual stream (or attention pattern) at the last prompt token, so the
forward stops after the deepest targeted layer. Each loss is normalised so that 0 is the target and its
`threshold` means "close enough to try generating":

- `ProbeLoss` (probe-SSR): frozen linear probes p_k (class 1 = harmful) at each layer;
  loss = sum_k alpha_k * -log(1 - p_k(e_k)) / sum_k alpha_k, the cross-entropy towards class 0 (harmless).
- `SteeringLoss` (steering-SSR): refusal directions r_k (difference in means harmful - harmless, unit);
  with e*_k the activation of the unattacked prompt and a the steering coefficient, the paper's steering
  objective pushes the projection <e_k, r_k> to (1 - a) <e*_k, r_k> (a = 1: the projection of directional
  ablation; a = 2: the reflection; the paper writes 1 + a with a < 0), and its stability term keeps the
  orthogonal part of e_k where it was. Projections are measured from a centre c_k: the paper's formula and
  the reference code measure them from the origin, where a plain prompt's projection can be negative and
  (1 - a) <e*, r> then lies on the refusal side; the toolkit's default (set by `analyses.rerouting`) is the
  harmless mean, so "acceptance" means the harmless side, and the target is p* - a |p*| with p* = <e* - c, r>:
  the paper's (1 - a) p* when p* > 0, and a move of the same size further toward acceptance when the prompt
  already sits on that side of c, never toward refusal. Each term is divided by its value at the start, so
  the loss starts at 1 per layer: ((p - p* + a|p*|) / (a |p*|))^2 + beta ||e_perp - e*_perp||^2 / ||e*_perp||^2,
  p = <e - c, r>.
  `reverse=True` is the paper's reverse-lens: the direction is flipped (pass the harmful mean as centre), so
  the search moves prompts toward refusal, e.g. to find what triggers it. The reference code's own steering
  loss, sum_k (-s_k - cos(e_k, r_k))^2 with fixed target cosines s_k, is not implemented.
- `AttentionLoss` (attention-SSR, the paper's hijack score, the reference's `Dazzle`): 1 - the attention mass
  that chosen heads put, from the last (or end-of-instruction) positions, on the optimised tokens.
- `HeadAblationLoss` (attention-SSR as the paper's results table ran it, the reference's `FullAblation`): the
  norm of each chosen head's output at the last position, `attn.hook_z` (pattern-weighted values before
  W_O), divided by its norm on the unattacked prompt: 0 when the heads write nothing, 1 at the start.
  Choosing the heads (by attribution) needs the model, so it is `analyses.rerouting.choose_heads`.
- `GCGLoss` (Zou et al. 2023): mean cross-entropy of a target completion ("Sure, here is ...") after the
  prompt; needs the full model.

A loss declares what it needs and never calls back into the engine: the sites it reads (`sites`, read with
`read`), where the forward may stop (`stop_layer`), and the sites whose values on the unattacked prompt it
compares against (`reference_sites`, e.g. steering-SSR's e*). The engine computes those references once per
behaviour and hands them over in `RowBatch.refs`. Losses take what was fitted as values (probe weights,
directions); fitting them on bundled prompts is `analyses.rerouting`'s job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.core.sites import Site
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model
    from interp.core.subspace import Direction

RESID = "hook_resid_post"


@dataclass
class RowBatch:
    """What a loss knows about the rows of a batch, besides their activations."""

    prompt: Int[Tensor, "r"]  # behaviour index of each row
    mask_cols: Int[Tensor, "r m"]  # key columns (prefix included) of the optimised tokens
    target_ids: Int[Tensor, "r t"]  # GCG target, right-aligned
    target_mask: Bool[Tensor, "r t"]
    refs: dict[Site, Tensor]  # the loss's `reference_sites` read on each row's unattacked prompt


class LayerProbes(Protocol):
    """Fitted per-layer linear probes, e.g. `probes.LinearProbes` (the core does not import that package)."""

    coef_: Tensor  # [layers, d]
    intercept_: Tensor  # [layers]

    @property
    def layers(self) -> list[int] | None: ...

    def check_for(self, model: "Model") -> None: ...


def _alphas(alphas: Sequence[float] | None, k: int, what: str) -> Tensor:
    if alphas is None:
        return torch.ones(k)
    a = torch.tensor([float(x) for x in alphas])
    if len(a) != k:
        raise InterpError(f"{len(a)} alphas for {k} {what}; give one weight per {what[:-1]}")
    if (a < 0).any() or a.sum() <= 0:
        raise InterpError(f"alphas must be non-negative with a positive sum, got {a.tolist()}")
    return a


def check_layers(model: "Model", layers: Sequence[int]) -> list[int]:
    """Validate target layers (negative counts from the end); sorted, unique, non-negative."""
    if layers is None or len(layers) == 0:
        raise InterpError("no target layers given; pass at least one layer, e.g. --layers 8 12")
    return sorted({model.check_layer(int(l), "target layer") for l in layers})


class AttackLoss(ABC):
    """A per-row loss over what hooks read during a (possibly truncated) forward; 0 is the target."""

    name: str = "loss"
    threshold: float = 0.1  # judge the candidate once the loss is below this
    sites: list[Site] = []
    stop_layer: int | None = None  # the forward stops after this layer; None: the full model (logits)
    needs_pattern: bool = False  # attention weights (eager attention)
    reference_sites: list[Site] = []  # sites (among `sites`) the engine reads once on each unattacked prompt
    uses_target: bool = False  # the target completion is appended after the prompt (GCG)

    def read(self, site: Site, x: Tensor) -> Tensor:
        """What to keep of a site's value during the forward (default: the last position, as float32)."""
        return x[:, -1].float()

    def logits_to_keep(self, n_target: int) -> int:
        return 1

    def describe(self) -> dict:
        return {"loss": self.name, "layers": sorted({s.layer for s in self.sites})}

    @abstractmethod
    def __call__(self, acts: dict[Site, Tensor], logits: Tensor | None, batch: RowBatch) -> Float[Tensor, "r"]:
        ...


class ProbeLoss(AttackLoss):
    """Probe-SSR: -log P(harmless) under frozen per-layer logistic probes, averaged with weights alpha."""

    name = "probe"
    threshold = 0.1  # P(harmful) ~ 0.1 on average

    def __init__(self, coef: Float[Tensor, "k d"], intercept: Float[Tensor, "k"], layers: Sequence[int],
                 alphas: Sequence[float] | None = None):
        if coef.ndim != 2 or intercept.shape != coef.shape[:1] or len(layers) != coef.shape[0]:
            raise InterpError(f"need one probe per layer: coef [k, d], intercept [k] for {len(layers)} layers, "
                              f"got {tuple(coef.shape)} and {tuple(intercept.shape)}")
        self.layers = list(layers)
        self.sites = [Site(l, RESID) for l in self.layers]
        self.stop_layer = max(self.layers)
        self.coef, self.intercept = coef.float(), intercept.float()
        self.alphas = _alphas(alphas, len(self.layers), "layers")

    @classmethod
    def from_probes(cls, probes: LayerProbes, model: "Model", layers: Sequence[int],
                    alphas: Sequence[float] | None = None) -> "ProbeLoss":
        """Take the probes of `layers` out of fitted per-layer probes of this model (a `probes.LinearProbes`)."""
        probes.check_for(model)
        layers = check_layers(model, layers)
        have = probes.layers or list(range(probes.coef_.shape[0]))
        if probes.coef_.ndim != 2:
            raise InterpError(f"probe-SSR needs one probe per layer (coef [layers, d]), got coef {tuple(probes.coef_.shape)}")
        missing = [l for l in layers if l not in have]
        if missing:
            raise InterpError(f"the probes have no layer {missing}; they cover layers {have}")
        idx = [have.index(l) for l in layers]
        return cls(probes.coef_[idx], probes.intercept_[idx], layers, alphas)

    def __call__(self, acts, logits, batch):
        x = torch.stack([acts[s] for s in self.sites], 1)  # [r, k, d]
        w, b, a = (t.to(x.device) for t in (self.coef, self.intercept, self.alphas))
        z = torch.einsum("rkd,kd->rk", x, w) + b
        return (F.softplus(z) * a).sum(-1) / a.sum()

    def describe(self) -> dict:
        return {"loss": self.name, "layers": self.layers, "alphas": self.alphas.tolist()}


class SteeringLoss(AttackLoss):
    """Steering-SSR: move the projection on each layer's refusal direction, measured from a centre (e.g. the
    harmless mean), by a times its start magnitude toward the acceptance side: p* -> p* - a |p*|."""

    name = "steering"
    threshold = 0.1

    def __init__(self, directions: Float[Tensor, "k d"], layers: Sequence[int], a: float = 2.0, beta: float = 0.0,
                 alphas: Sequence[float] | None = None, scales: Sequence[float] | None = None,
                 centres: Float[Tensor, "k d"] | None = None, centre: str | None = None, reverse: bool = False):
        """`centres`: the point of each layer projections are measured from (None: the origin, the paper's
        formula); `centre` names it for `describe` ("harmless", "midpoint", "harmful", ...). `reverse`: the
        reverse-lens, steering toward the direction (refusal) instead of away from it."""
        if directions.ndim != 2 or directions.shape[0] != len(layers):
            raise InterpError(f"need one refusal direction per layer: [k, d] for {len(layers)} layers, got {tuple(directions.shape)}")
        if not a > 0:
            raise InterpError(f"the steering coefficient a must be positive (1: ablation, 2: reflection), got {a}")
        if centres is not None and tuple(centres.shape) != tuple(directions.shape):
            raise InterpError(f"need one centre per layer, shaped like the directions {tuple(directions.shape)}, "
                              f"got {tuple(centres.shape)}")
        self.layers = list(layers)
        self.sites = [Site(l, RESID) for l in self.layers]
        self.reference_sites = list(self.sites)  # e*: the unattacked prompt's activations
        self.stop_layer = max(self.layers)
        self.reverse = bool(reverse)
        self.r = F.normalize(directions.float(), dim=-1) * (-1.0 if self.reverse else 1.0)
        self.centres = centres.float() if centres is not None else torch.zeros_like(self.r)
        self.centre = centre or ("origin" if centres is None else "given")
        self.scales = torch.tensor([float(s) for s in scales]) if scales is not None else None
        self.a, self.beta = float(a), float(beta)
        self.alphas = _alphas(alphas, len(self.layers), "layers")

    @classmethod
    def from_directions(cls, directions: Sequence["Direction"], model: "Model", layers: Sequence[int], **kwargs) -> "SteeringLoss":
        for d in directions:
            d.check_for(model)
        return cls(torch.stack([d.vector for d in directions]), check_layers(model, layers),
                   scales=[d.scale or 1.0 for d in directions], **kwargs)

    def projections(self, e: Float[Tensor, "r k d"]) -> Float[Tensor, "r k"]:
        """<e - c, r> per row and layer: positive on the refusal side of the centre (the harmful side when
        `reverse`)."""
        return ((e - self.centres.to(e.device)) * self.r.to(e.device)).sum(-1)

    def __call__(self, acts, logits, batch):
        e = torch.stack([acts[s] for s in self.sites], 1)  # [r, k, d]
        e_star = torch.stack([batch.refs[s] for s in self.sites], 1).to(e.device)
        r, a = self.r.to(e.device), self.alphas.to(e.device)
        p, p_star = self.projections(e), self.projections(e_star)  # [r, k]
        floor = 0.05 * (self.scales.to(e.device) if self.scales is not None else p_star.abs().mean(0))
        gap = (self.a * p_star).abs().clamp(min=1e-6).maximum(floor)
        target = p_star - self.a * p_star.abs()  # (1 - a) p* when p* > 0; never toward the refusal side
        loss = ((p - target) / gap) ** 2
        if self.beta:
            perp = e - (e * r).sum(-1, keepdim=True) * r
            perp_star = e_star - (e_star * r).sum(-1, keepdim=True) * r
            loss = loss + self.beta * (perp - perp_star).pow(2).sum(-1) / perp_star.pow(2).sum(-1).clamp(min=1e-6)
        return (loss * a).sum(-1) / a.sum()

    def describe(self) -> dict:
        return {"loss": self.name, "layers": self.layers, "a": self.a, "beta": self.beta, "alphas": self.alphas.tolist(),
                "centre": self.centre, "reverse": self.reverse}


def _check_heads(heads: Sequence[tuple[int, int]], n_heads: int) -> list[tuple[int, int]]:
    """(layer, head) pairs as ints, each head index within the model's heads; at least one."""
    if not heads:
        raise InterpError("attention-SSR needs at least one (layer, head) pair")
    out = [(int(l), int(h)) for l, h in heads]
    for l, h in out:
        if not 0 <= h < n_heads:
            raise InterpError(f"head {h} of layer {l} is out of range: the model has heads 0..{n_heads - 1}")
    return out


class AttentionLoss(AttackLoss):
    """Attention-SSR: 1 - the attention mass of chosen heads, from the last `n_query` positions, on the masks."""

    name = "attention"
    objective = "hijack"
    threshold = 0.5
    needs_pattern = True

    def __init__(self, heads: Sequence[tuple[int, int]], n_heads: int, n_query: int = 1,
                 alphas: Sequence[float] | None = None):
        self.heads = _check_heads(heads, n_heads)
        self.layers = sorted({l for l, _ in self.heads})
        self.sites = [Site(l, "attn.hook_pattern") for l in self.layers]
        self.stop_layer = max(self.layers)
        self.n_query = int(n_query)
        self.alphas = _alphas(alphas, len(self.heads), "heads")

    @classmethod
    def for_model(cls, model: "Model", heads: Sequence[Sequence[int]] | None = None, layers: Sequence[int] | None = None,
                  query: str = "last", alphas: Sequence[float] | None = None) -> "AttentionLoss":
        """Chosen heads, or every head of `layers`; query "last" (last token) or "eoi" (end-of-instruction tokens)."""
        if heads:
            pairs = [(model.check_layer(int(l), "head layer"), int(h)) for l, h in heads]
        else:
            pairs = [(l, h) for l in check_layers(model, layers or []) for h in range(model.n_heads)]
        if query not in ("last", "eoi"):
            raise InterpError(f"query must be 'last' or 'eoi', got {query!r}")
        return cls(pairs, model.n_heads, model.n_eoi if query == "eoi" else 1, alphas)

    def read(self, site, x):  # [r, head, q, k] -> the query rows of interest
        return x[:, :, -self.n_query:].float()

    def __call__(self, acts, logits, batch):
        losses = []
        for l, h in self.heads:
            pattern = acts[Site(l, "attn.hook_pattern")][:, h]  # [r, q, k]
            cols = batch.mask_cols.to(pattern.device)[:, None].expand(-1, pattern.shape[1], -1)
            mass = pattern.gather(-1, cols).sum(-1).mean(-1)  # [r]
            losses.append(1 - mass)
        a = self.alphas.to(losses[0].device)
        return (torch.stack(losses, -1) * a).sum(-1) / a.sum()

    def describe(self) -> dict:
        return {"loss": self.name, "objective": self.objective, "layers": self.layers, "heads": self.heads,
                "n_query": self.n_query}


class HeadAblationLoss(AttackLoss):
    """Attention-SSR with the paper's head-output-ablation loss (its results table; the reference's
    `FullAblation`): sum_k alpha_k ||z_k|| / ||z*_k|| / sum_k alpha_k, with z_k the chosen head's `attn.hook_z`
    at the last position and z*_k its value on the unattacked prompt. 0 when the heads write nothing."""

    name = "attention"
    objective = "ablation"
    threshold = 0.5  # the heads' outputs halved

    def __init__(self, heads: Sequence[tuple[int, int]], n_heads: int, alphas: Sequence[float] | None = None,
                 scores: Sequence[float] | None = None):
        self.heads = _check_heads(heads, n_heads)
        self.layers = sorted({l for l, _ in self.heads})
        self.sites = [Site(l, "attn.hook_z") for l in self.layers]
        self.reference_sites = list(self.sites)
        self.stop_layer = max(self.layers)
        self.alphas = _alphas(alphas, len(self.heads), "heads")
        self.scores = [float(x) for x in scores] if scores is not None else None

    def read(self, site, x):  # [r, pos, head, d_head] -> the last position, [r, head, d_head]
        return x[:, -1].float()

    def norms(self, acts: dict[Site, Tensor]) -> Float[Tensor, "r k"]:
        """||z|| of each chosen head at the last position."""
        return torch.stack([acts[Site(l, "attn.hook_z")][:, h].norm(dim=-1) for l, h in self.heads], -1)

    def __call__(self, acts, logits, batch):
        z = self.norms(acts)
        z_star = self.norms(batch.refs).to(z.device) if batch.refs else torch.ones_like(z)
        a = self.alphas.to(z.device)
        return (z / z_star.clamp(min=1e-6) * a).sum(-1) / a.sum()

    def describe(self) -> dict:
        return {"loss": self.name, "objective": self.objective, "layers": self.layers, "heads": self.heads,
                "head_scores": self.scores, "alphas": self.alphas.tolist()}


class GCGLoss(AttackLoss):
    """GCG: mean cross-entropy of the target tokens that follow the prompt (full forward)."""

    name = "gcg"
    threshold = 0.5
    uses_target = True

    def logits_to_keep(self, n_target: int) -> int:
        if n_target == 0:
            raise InterpError("GCG needs a target completion for every behaviour (e.g. AdvBench's 'Sure, here is ...')")
        return n_target + 1

    def __call__(self, acts, logits, batch):
        logp = logits[:, :-1].float().log_softmax(-1)  # position t predicts target token t
        target = batch.target_ids.to(logp.device)
        nll = -logp.gather(-1, target[..., None])[..., 0]
        mask = batch.target_mask.to(nll.device).float()
        return (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1)

    def describe(self) -> dict:
        return {"loss": self.name, "layers": []}
