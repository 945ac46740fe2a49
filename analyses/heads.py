"""Heads as matrices: singular value spectra, composition scores and communication channels.

The method. An attention head is two low-rank d x d matrices (Elhage et al. 2021, "A Mathematical Framework
for Transformer Circuits"): W_QK = W_Q W_K^T decides where it attends, W_OV = W_V W_O what it moves. Their
singular value spectra say how many directions a head really uses. Two heads in different layers compose when
the earlier one's W_OV writes into the subspace the later one reads: with its queries (Q-composition), its keys
(K-composition) or its values (V-composition). The composition score ||W_OV1 W_QK2||_F / (||W_OV1||_F ||W_QK2||_F)
(and its K and V variants) measures that from the weights alone; random matrices of the same shapes score about
sqrt(d_head / d), the baseline every score is read against.

Talking Heads (Merullo, Eickhoff and Pavlick 2024, "Talking Heads: Understanding Inter-layer Communication in
Transformer Language Models") sharpen this: split the sender's W_OV into its rank-1 SVD components and score each
with the receiver. Whole-matrix scores sit near the baseline, but one or two components often carry most of the
composition: a low-rank communication channel between the two heads (in GPT-2, the inhibition heads tell the
name movers which name not to copy through such a channel). Editing the channel (scaling or removing those
components, in activations or in the weights) then tests whether the model uses it; on the Laundry List task
the paper improves recall from long lists by such edits.

This module computes every spectrum and every pair's composition from factored matrices (`interp.circuits.heads`: thin
QR of the factors, r x r work per pair, never a d x d product), samples the random baseline, and lists the
strongest pairs of each kind with the components that carry them (the fewest whose shares of the pair's squared
composition reach `share`). `direct_effects` finds the heads that write the answer (direct logit attribution),
to choose receivers from data. The attention norm's weight is folded into W_Q, W_K, W_V; rotary embeddings and
biases are left out of the matrices (see `interp.circuits.heads`).

`channels` runs the paper's check of a channel on data, with the items split so that no figure is scored on the
items that chose what it scores (`split_items`: a seeded split of the task's distinct prompts into a `select`
part and a `score` part). On the select part only, the receivers are chosen (the heads with the largest direct
effect: the movers). From the weights, each receiver's sender (the earlier head with the largest composition into
it, Q by default: the inhibition route) and their channel. On the score part only, the inhibition score
(`interp.circuits.heads.inhibition_scores`: the drop of the receiver's attention gap between the answer and the
wrong answer, IO and S in IOI, when the channel is removed) of the channel, of a control (the sender's weakest
components for that pair, as many) and of every sender component alone, beside its composition score: the
paper's Figure 2, where the data-based score confirms the weight-based one. The Result says which part each
figure uses (`figures_use`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from interp.circuits.heads import MODES, Composition, HeadSVDs, check_head, composition, head_svds, random_baseline
from interp.core.result import Result
from interp.errors import InterpError
from interp.io import write_tensors

if TYPE_CHECKING:
    from pathlib import Path

    from interp.circuits.tasks import TaskSet
    from interp.core.model import Model


def channel(comp: Composition, sender: tuple[int, int], receiver: tuple[int, int], share: float = 0.5) -> dict:
    """The fewest sender components whose shares of the pair's squared composition reach `share`, strongest first."""
    if not comp.scores[(*sender, *receiver)].isfinite():
        raise InterpError(f"head {sender[0]}.{sender[1]} cannot send to head {receiver[0]}.{receiver[1]}: "
                          "the sender's layer must be earlier than the receiver's")
    shares = comp.shares(sender, receiver)
    order = shares.argsort(descending=True)
    n = int((shares[order].cumsum(0) < share).sum()) + 1
    keep = order[:n].tolist()
    rows = comp.components[(*sender, *receiver)]
    return {"mode": comp.mode, "sender": list(sender), "receiver": list(receiver),
            "score": float(comp.scores[(*sender, *receiver)]), "components": keep,
            "shares": [float(shares[i]) for i in keep], "component_scores": [float(rows[i]) for i in keep],
            "singular_values": [float(comp.sender_s[sender][i]) for i in keep], "rank": int(rows.numel())}


@dataclass
class HeadsResult(Result):
    model: dict
    svds: HeadSVDs
    compositions: dict[str, Composition]
    baseline: dict[str, Tensor]  # sampled random-matrix "scores" [n] and "components" [n, r]
    top_pairs: dict[str, list[dict]]  # per mode, the strongest pairs with their channels
    config: dict = field(default_factory=dict)
    title: str = "Heads as matrices: spectra, composition, channels"

    @property
    def n_layers(self) -> int:
        return self.svds.weights.n_layers

    @property
    def n_heads(self) -> int:
        return self.svds.weights.n_heads

    def channel(self, mode: str, sender: tuple[int, int], receiver: tuple[int, int], share: float = 0.5) -> dict:
        """The channel between two heads (see `channel`), checked for range."""
        if mode not in self.compositions:
            raise InterpError(f"no {mode!r} composition here; computed: {', '.join(self.compositions)}")
        for layer, head in (sender, receiver):
            check_head(layer, head, self.n_layers, self.n_heads)
        return channel(self.compositions[mode], (sender[0], sender[1]), (receiver[0], receiver[1]), share)

    def effective_rank(self, matrix: str = "OV") -> Tensor:
        """Per head, exp(entropy) of the normalised squared singular values, [L, H]."""
        s2 = getattr(self.svds, matrix).S.double().square()
        p = s2 / s2.sum(-1, keepdim=True)
        return torch.exp(-(p * p.clamp_min(1e-30).log()).sum(-1)).float()

    def summary(self) -> dict:
        base = self.baseline["scores"]
        comp = {}
        for mode, c in self.compositions.items():
            valid = c.scores[c.scores.isfinite()]
            comp[mode] = {"mean": float(valid.mean()), "max": float(valid.max()),
                          "share_above_baseline_p99": float((valid > base.quantile(0.99)).float().mean()),
                          "top_pairs": self.top_pairs[mode]}
        spectra = {m: {"effective_rank_mean_per_layer": self.effective_rank(m).mean(1).tolist(),
                       "top_singular_value_mean_per_layer": getattr(self.svds, m).S[..., 0].mean(1).float().tolist()}
                   for m in ("OV", "QK")}
        return {"model": self.model, "config": self.config, "spectra": spectra,
                "baseline": {"samples": len(base), "mean": float(base.mean()), "std": float(base.std()),
                             "p99": float(base.quantile(0.99)),
                             "component_mean": float(self.baseline["components"].mean())},
                "composition": comp}

    def figures(self) -> dict[str, go.Figure]:
        figs = {f"{m.lower()}_spectra": self._spectra(m) for m in ("OV", "QK")}
        figs.update({f"composition_{mode}": self._composition(c) for mode, c in self.compositions.items()})
        figs["composition_vs_baseline"] = self._histograms()
        figs["channels"] = self._channels()
        return figs

    def _spectra(self, matrix: str) -> go.Figure:
        s = getattr(self.svds, matrix).S.float()
        s = (s / s[..., :1]).mean(1)  # per layer: the head-mean spectrum, each head normalised by its largest
        fig = go.Figure([go.Scatter(x=list(range(1, s.shape[-1] + 1)), y=s[layer].tolist(), mode="lines",
                                    name=f"layer {layer}") for layer in range(s.shape[0])])
        fig.update_layout(title=f"W_{matrix} singular values per layer (mean over heads of s_i / s_1)",
                          xaxis_title="component i", yaxis_title="s_i / s_1", yaxis_type="log")
        return fig

    def _labels(self) -> list[str]:
        return [f"{layer}.{head}" for layer in range(self.n_layers) for head in range(self.n_heads)]

    def _composition(self, c: Composition) -> go.Figure:
        n = self.n_layers * self.n_heads
        ratio = (c.scores.reshape(n, n) / self.baseline["scores"].mean()).round(decimals=3)
        labels = self._labels()
        fig = go.Figure(go.Heatmap(z=ratio.tolist(), x=labels, y=labels, colorscale="Viridis",
                                   colorbar=dict(title="score / baseline")))
        fig.update_layout(title=f"{c.mode}-composition of every head pair, over the random baseline "
                                f"({float(self.baseline['scores'].mean()):.4f})",
                          xaxis_title="receiver (layer.head)", yaxis_title="sender (layer.head)")
        return fig

    def _histograms(self) -> go.Figure:
        fig = go.Figure([go.Histogram(x=c.scores[c.scores.isfinite()].tolist(), name=f"{mode}-composition",
                                      histnorm="probability density", opacity=0.6)
                         for mode, c in self.compositions.items()])
        fig.add_trace(go.Histogram(x=self.baseline["scores"].tolist(), name="random matrices (baseline)",
                                   histnorm="probability density", opacity=0.6))
        fig.update_layout(title="composition scores of all head pairs against random matrices of the same shapes",
                          xaxis_title="composition score", barmode="overlay")
        return fig

    def _channels(self, n_pairs: int = 3, n_components: int = 16) -> go.Figure:
        fig = go.Figure()
        for mode, pairs in self.top_pairs.items():
            for p in pairs[:n_pairs]:
                shares = self.compositions[mode].shares(tuple(p["sender"]), tuple(p["receiver"]))
                top = shares.sort(descending=True).values[:n_components]
                fig.add_trace(go.Bar(x=list(range(1, len(top) + 1)), y=top.tolist(),
                                     name=f"{mode}: {p['sender'][0]}.{p['sender'][1]} -> {p['receiver'][0]}.{p['receiver'][1]}"))
        fig.update_layout(title="strongest pairs: each sender component's share of the pair's composition (sorted)",
                          xaxis_title="component, by share", yaxis_title="share of squared composition",
                          barmode="group")
        return fig

    def save_artifacts(self, directory: "Path") -> None:
        tensors = {"ov_singular_values": self.svds.OV.S.float(), "qk_singular_values": self.svds.QK.S.float(),
                   "baseline_scores": self.baseline["scores"]}
        tensors.update({f"composition_{m}": c.scores for m, c in self.compositions.items()})
        write_tensors(directory / "heads.safetensors", tensors)


@dataclass
class HeadsConfig:
    """Everything `run` depends on besides the model."""

    modes: tuple[str, ...] = ("Q", "K", "V")  # composition kinds: Q, K, V (interp.circuits.heads.MODES)
    top: int = 8  # strongest pairs per kind whose channels are listed
    share: float = 0.5  # a channel: the fewest components carrying this share of a pair
    baseline_samples: int = 256  # random matrix pairs for the baseline
    fold_norm: bool = True  # fold the attention norm's weight into W_Q, W_K, W_V
    seed: int = 0


def run(model: "Model", data: None = None, config: HeadsConfig | None = None) -> HeadsResult:
    """Spectra of every head's W_OV and W_QK, composition of every head pair in `config.modes` against a random
    baseline of `baseline_samples` matrix pairs, and the channels of the `top` strongest pairs per mode. The
    weights are the only input: `data` is unused (the same entry shape as every analysis)."""
    cfg = config or HeadsConfig()
    modes = [m.upper() for m in cfg.modes]
    top, share, baseline_samples, fold_norm, seed = cfg.top, cfg.share, cfg.baseline_samples, cfg.fold_norm, cfg.seed
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise InterpError(f"unknown composition modes {bad or list(modes)}; choose from {', '.join(MODES)}")
    if not 0 < share <= 1:
        raise InterpError(f"share must be in (0, 1], got {share}")
    if top < 1 or baseline_samples < 2:
        raise InterpError(f"top must be >= 1 and baseline_samples >= 2, got {top} and {baseline_samples}")
    svds = head_svds(model, fold_norm=fold_norm)
    comps = {m: composition(svds, m) for m in modes}
    base = random_baseline(model.d_model, svds.OV.S.shape[-1], n=baseline_samples, seed=seed)
    H = model.n_heads
    top_pairs = {}
    for m, c in comps.items():
        flat = torch.nan_to_num(c.scores.flatten(), nan=-1.0)
        idx = flat.topk(min(top, int(c.scores.isfinite().sum()))).indices.tolist()
        pairs = [((i // (H * model.n_layers * H), i // (model.n_layers * H) % H), (i // H % model.n_layers, i % H))
                 for i in idx]
        top_pairs[m] = [channel(c, s, r, share) for s, r in pairs]
    record = {"modes": list(modes), "top": top, "share": share, "baseline_samples": baseline_samples,
              "fold_norm": fold_norm, "seed": seed, "n_kv_heads": svds.weights.n_kv_heads, "d_head": model.d_head,
              "biases": {k: getattr(svds.weights, k) is not None for k in ("b_Q", "b_K", "b_V")}}
    return HeadsResult(model.fingerprint, svds, comps, base, top_pairs, record)


@torch.no_grad()
def direct_effects(model: "Model", prompts: Sequence[str], answer: Tensor, wrong: Tensor, chat: bool = False,
                   batch_size: int = 16) -> Float[Tensor, "layer head"]:
    """Direct logit attribution of every head at the last token: the mean over prompts of what the head's output
    adds to logit(answer) - logit(wrong) through the final norm (its 1/rms scale frozen at the prompt's own value).
    Heads with a large positive effect write the answer (movers); negative, they suppress it."""
    from interp.circuits.heads import head_weights

    if len(prompts) != len(answer) or len(prompts) != len(wrong):
        raise InterpError(f"got {len(prompts)} prompts, {len(answer)} answers and {len(wrong)} wrong answers; give one each")
    last = f"blocks.{model.n_layers - 1}.hook_resid_post"
    acts = model.capture(list(prompts), ["attn.hook_z", last], positions="last", chat=chat, batch_size=batch_size)
    z = acts.stack("attn.hook_z")  # [n, L, H, dh]
    resid = acts[last]  # [n, d]
    w_o = head_weights(model, fold_norm=False, dtype=torch.float32).W_O.cpu()  # [L, H, dh, d]
    norm = model.hf.get_submodule(model.family.final_norm)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    scale = norm.weight.float().cpu() / resid.square().mean(-1, keepdim=True).add(eps).sqrt()  # [n, d]
    unembed = model.hf.get_output_embeddings().weight
    diff = (unembed[answer.to(unembed.device)] - unembed[wrong.to(unembed.device)]).float().cpu()  # [n, d]
    return torch.einsum("nlhe,lhed,nd->lh", z, w_o, scale * diff) / len(prompts)


# ----- receivers from data, channels from weights, the inhibition score on held-out items -----

def split_items(task: "TaskSet", select_share: float = 0.5, seed: int = 0) -> tuple[list[int], list[int]]:
    """Item indices of two disjoint parts of `task`: `select` (a `select_share` of the items, where receivers are
    chosen) and `score` (the rest, where channels and edits are scored). Items with the same clean prompt fall in
    the same part, so no scoring prompt is ever seen by the chooser; the draw is seeded."""
    import random

    if not 0 < select_share < 1:
        raise InterpError(f"select_share must be in (0, 1), the share of the items that choose the receivers; got "
                          f"{select_share!r}")
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(task.items):
        groups.setdefault(item.clean, []).append(i)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n_select = round(select_share * len(keys))
    if not 1 <= n_select < len(keys):
        raise InterpError(f"task {task.name!r} has {len(keys)} distinct prompts: too few to split into a part that "
                          f"chooses receivers and a part that scores them (select_share={select_share})")
    select = sorted(i for k in keys[:n_select] for i in groups[k])
    score = sorted(i for k in keys[n_select:] for i in groups[k])
    return select, score


def choose_receivers(model: "Model", task: "TaskSet", n: int, batch_size: int = 16
                     ) -> tuple[list[tuple[int, int]], Float[Tensor, "layer head"]]:
    """The `n` heads with the largest direct effect on the task's logit difference (`direct_effects`, the movers),
    from the items of `task` only (pass the select part), in layers after the first (a receiver needs an earlier
    sender); and the effects of every head."""
    toks = task.tokens(model)
    effects = direct_effects(model, task.clean, toks.answer, toks.wrong, chat=task.chat, batch_size=batch_size)
    H = model.n_heads
    order = [i for i in effects.flatten().argsort(descending=True).tolist() if i // H > 0]
    return [(i // H, i % H) for i in order[:n]], effects


@dataclass
class ChannelsConfig:
    """How `channels` chooses receivers, senders and channels, and scores them."""

    receivers: int = 3  # top direct-effect heads (movers) used as receivers, chosen on the select part
    select_share: float = 0.5  # share of the items that choose the receivers; the rest score the channels
    mode: str = "Q"  # composition through which a sender reaches its receiver (the inhibition route: Q)
    share: float = 0.5  # a channel: the fewest sender components carrying this share of the pair's composition
    scale: float = 0.0  # the edit of the inhibition score (0 removes the channel)
    per_component: bool = True  # also score every sender component alone (the paper's Figure 2)
    seed: int = 0
    batch_size: int = 16


@dataclass
class ChannelsResult(Result):
    """Receivers chosen on the select part of a task, each with its strongest sender by composition and their
    channel, and the inhibition scores of the channel, of a control and of every component on the score part."""

    model: dict
    task: str
    split: dict  # "select" and "score": the item indices of each part
    effects: Tensor  # [L, H] direct effects on the select part
    pairs: list[dict]  # per receiver: sender, channel, inhibition (channel, control, per component)
    config: dict = field(default_factory=dict)
    title: str = "Talking Heads channels: receivers from data, channels from weights, inhibition on held-out items"

    def summary(self) -> dict:
        return {"model": self.model, "task": self.task, "config": self.config,
                "split": {k: {"items": len(v), "indices": v} for k, v in self.split.items()},
                "figures_use": {"direct_effects": "select", "inhibition_components": "score",
                                "inhibition_channels": "score"},
                "pairs": self.pairs}

    def figures(self) -> dict[str, go.Figure]:
        L, H = self.effects.shape
        fx = go.Figure(go.Heatmap(z=self.effects.tolist(), x=list(range(H)), y=list(range(L)), colorscale="RdBu",
                                  zmid=0, colorbar=dict(title="logit diff")))
        fx.update_layout(title=f"Direct effect of every head on the logit difference ({len(self.split['select'])} "
                               "items of the select part, which chose the receivers)",
                         xaxis_title="head", yaxis_title="layer")
        comp = go.Figure()
        chans = go.Figure()
        names, channel, control = [], [], []
        for p in self.pairs:
            label = f"{p['sender'][0]}.{p['sender'][1]} -> {p['receiver'][0]}.{p['receiver'][1]}"
            names.append(label)
            channel.append(p["inhibition"]["channel"]["score"])
            control.append(p["inhibition"]["control"]["score"])
            per = p["inhibition"].get("components")
            if per:
                comp.add_trace(go.Scatter(x=p["component_scores"], y=[c["score"] for c in per], mode="markers",
                                          name=label, text=[f"component {c['components'][0]}" for c in per]))
        comp.update_layout(title=f"Every sender component alone: inhibition score ({len(self.split['score'])} held-out "
                                 "items of the score part) against its composition score (weights)",
                           xaxis_title="component composition score", yaxis_title="inhibition score "
                                                                                   "(drop of the receiver's gap)")
        chans.add_trace(go.Bar(x=names, y=channel, name="channel removed"))
        chans.add_trace(go.Bar(x=names, y=control, name="control removed (weakest components, same number)"))
        chans.update_layout(title=f"Inhibition score of each channel and its control ({len(self.split['score'])} "
                                  "held-out items of the score part)", yaxis_title="inhibition score", barmode="group")
        return {"direct_effects": fx, "inhibition_channels": chans, "inhibition_components": comp}


def channels(model: "Model", task: "TaskSet", heads: HeadsResult, config: ChannelsConfig | None = None) -> ChannelsResult:
    """The Talking Heads pipeline with held-out scoring. Split `task` (`split_items`): on the select part, choose
    `receivers` movers by direct effect; for each, the earlier head with the largest `mode` composition into it
    (weights, `heads`) and their channel (`HeadsResult.channel`); on the score part only, the inhibition score of
    the channel removed, of a control (the sender's weakest components for that pair, as many) and, with
    `per_component`, of every sender component alone (target token: the answer, inhibited token: the wrong answer,
    as IOI's IO and S)."""
    from interp.circuits.heads import inhibition_scores

    cfg = config or ChannelsConfig()
    if cfg.mode.upper() not in heads.compositions:
        raise InterpError(f"no {cfg.mode!r} composition in the heads result; computed: {', '.join(heads.compositions)}")
    if isinstance(cfg.receivers, bool) or not isinstance(cfg.receivers, int) or cfg.receivers < 1:
        raise InterpError(f"receivers must be a positive integer, got {cfg.receivers!r}")
    select, score = split_items(task, cfg.select_share, cfg.seed)
    movers, effects = choose_receivers(model, task.subset(select), cfg.receivers, cfg.batch_size)
    held = task.subset(score)
    toks = held.tokens(model)
    comp = heads.compositions[cfg.mode.upper()]
    H = model.n_heads
    pairs = []
    for mover in movers:
        column = comp.scores[:, :, mover[0], mover[1]]  # [L, H] over senders (NaN at and after the mover's layer)
        flat = int(torch.nan_to_num(column.flatten(), nan=-1.0).argmax())
        sender = (flat // H, flat % H)
        ch = heads.channel(cfg.mode.upper(), sender, mover, cfg.share)
        shares = comp.shares(sender, mover)
        weakest = shares.argsort()[:len(ch["components"])].tolist()
        wanted = [ch["components"], weakest]
        rows = comp.components[(*sender, *mover)]
        if cfg.per_component:
            wanted += [[c] for c in range(len(rows))]
        got = inhibition_scores(model, held.clean, toks.answer, toks.wrong, sender, mover, wanted, heads.svds,
                                cfg.scale, chat=held.chat, batch_size=cfg.batch_size)
        ch.update(direct_effect_receiver=float(effects[mover]), direct_effect_sender=float(effects[sender]),
                  control_components=weakest, component_scores=[float(x) for x in rows],
                  inhibition={"channel": got[0].summary(), "control": got[1].summary(),
                              "components": [g.summary() for g in got[2:]]})
        pairs.append(ch)
    record = {**asdict(cfg), "mode": cfg.mode.upper()}
    return ChannelsResult(model.fingerprint, task.name, {"select": select, "score": score}, effects, pairs, record)
