"""Concept steering: which programming language a code model writes (G-ACT, with ACT-style and neuron baselines).

The method (Sharma and Raman 2025, *Steering Conceptual Bias via Transformer Latent-Subspace Activation*, arXiv
2506.18887; no public code). A code model asked for "a function that ..." answers in its favourite language (the
"baseline" row says which). Render each programming task twice: neutral ("Write a function that returns the median of a
list of numbers.") and naming a language (the same task + " Use C++."). The per-prompt difference of the
activations (named minus neutral) at the last prompt token points, at every layer, from "any language" to "this
language". G-ACT clusters these per-prompt differences with k-means into a few centroids per layer (a handful of
steering vectors instead of one), trains a small per-layer probe on the neutral activation to predict which cluster
a prompt's difference falls in, refines the probe by gradient on the target language's log-likelihood with the
model frozen, and at inference lets the probe pick a centroid per prompt, injected at every generated token. Its
headline is the per-layer probe accuracy (higher than ACT's, Wang et al. 2024's adaptive steering, whose probes are
not refined), and the share of answers that come out in the target language.

Compared here on held-out test tasks, all at the same injection layer and strength:
1. "baseline": the neutral prompts, unsteered (greedy), whose language shares say where the model starts;
2. "prompt": the language-named prompts, the reference point steering is measured against;
3. "mean": ACT-style, one mean-difference vector per target language (the mean over training tasks of named minus
   neutral at the injection layer), `alpha` times it added at every position (`ConceptRouter.fixed`, i.e. `Add`);
4. "gact": the router (`interp.steering.concept_router.ConceptRouter`): k centroids, the probe picks one per prompt,
   `alpha` times it added at every position of that prompt's row (`RowwiseAdd`);
5. "neurons" (`neurons=True`): the paper's static neuron-attribution baseline, which it finds brittle before it
   builds G-ACT (`interp.steering.neuron_attribution`). Every MLP neuron (`mlp.hook_post`, all layers) is scored by
   the gradient of the target language's token with respect to a scale on the neuron's output weight, at 1: the
   sum over positions of activation x gradient of the mean log-probability of the language's fence tag ("cpp" in
   "```cpp") given the neutral prompt and the fence opening "```", averaged over `n_neuron_fit` training tasks.
   The `neuron_k` highest neurons over all layers (the paper perturbs the single highest) are multiplied by one
   factor at every position of every prompt (`NeuronScale`, which equals scaling their columns of the down
   projection: the paper's weight perturbation, as a hook); the factor is chosen among `neuron_scales` on the same
   validation tasks and token budget as the layer and alpha (highest target share; ties: code share, then the
   factor nearest 1). The same neurons and factor for every prompt: "static".
Answers are classified by `interp.judges.languages.detect` (fence tag, else signatures and Pygments); "code share" is the
share of answers that are still code in any language. The injection layer and alpha are chosen on validation tasks:
for each candidate (layer, alpha) the mean vector is added to `n_select` validation prompts, greedy for
`select_tokens` tokens, and the candidate with the highest target-language share wins (ties: higher code share,
then smaller alpha, then the earlier layer). Both methods then use it; choosing it with the mean vector favours
"mean", if anything.

Splits are by task id (seeded): test, validation and training tasks never overlap. Everything fitted (mean vectors,
k-means, probes, refinement, neuron attribution) sees the training tasks only; the validation tasks choose the layer
and alpha (and the neurons' factor) and score the probes; the test tasks only score the methods.

What is faithful: per-prompt differences clustered with k-means; a per-layer softmax probe on the neutral activation
trained to predict the cluster; the probe refined by gradient on the target language's likelihood with the model
frozen and the centroids fixed; the probe's pick injected at every generated token; per-layer probe accuracy.
What departs (also listed, by these names, in the Result's `departures`):
- `refine_target`: the paper's exact refinement loss is not public. Here the probe (weights and bias, at the
  injection layers) minimises the mean negative log-probability of target tokens given the *neutral* prompt with
  the probe's soft choice injected (alpha times the probability-weighted mixture of the centroids, so it is
  differentiable), plus the probe's L2 penalty: "answer" takes as target tokens the first `refine_tokens` tokens of
  the model's own greedy answer to the language-named prompt; "fence" takes the code-fence opening ("```cpp\\n").
  Offline, `refine_epochs` epochs over `n_refine` training tasks with Adam (the paper refines "online").
- `refine_layers`: only the probes of the injection layers are refined (each refinement step is a forward and
  backward pass of the model); the probe-accuracy figure across all layers shows the unrefined (ACT-style) probes,
  with the refined ones marked at the injection layers.
- `probe_input`: the probes read the *unsteered* activation of the prompt (one extra forward of the prompt, up to the
  deepest injection layer), not the stream already steered at earlier layers in the same pass.
- `pick`: one pick per prompt, made on the prompt's last token and kept for every generated token.
- `layers`: one injection layer (and alpha) per target language, chosen on validation with the mean vector; the
  paper steers a subset of layers chosen by hand.
- `prompt_form`: the language is named by appending " Use {Name}." to the task (one form for every task).
With the neuron baseline (no code of the paper is public; its description leaves the score and the size of
the perturbation open):
- `neuron_score`: "the highest activated MLP weight for a C++ or CPP token" is read as the highest attribution,
  gradient x activation summed over positions (the first-order effect of scaling the neuron's weight), of the
  language's fence-tag token; the paper's exact score is not public.
- `neuron_prompts`: the attribution reads the neutral training prompts followed by "```" (the token that decides
  the language is the fence tag), not prompts of the paper's scientific-code set.
- `neuron_scale`: the perturbation is a factor on the neurons' activations (= on their down-projection columns),
  chosen on validation among `neuron_scales`; the paper's size of perturbation is not given.
- `neuron_k` (only when it is not 1): more neurons than the paper's one are scaled.

Reading the results. Probe accuracy is agreement with k-means: the probe's pick against the nearest centroid of a
validation task's own difference. Refinement optimises the target likelihood instead, so it may move the probe to
whichever centroid steers best and its agreement with k-means can fall; `refinement.hard_pick_loss` says whether the
refined picks steer better on the training targets than the unrefined picks and than the mean vector. An answer cut
off (at `max_new_tokens`) before any code counts as not code: a steered model that writes a long preamble loses
code share without writing broken code.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.core.interventions import RowwiseAdd
from interp.core.progress import Checkpoint, Progress, digest, model_settings
from interp.core.result import Result
from interp.core.runner import forward
from interp.data.prompts import Behavior, dataset_path, read_behaviors
from interp.errors import InterpError
from interp.judges.languages import canonical, detect
from interp.steering.concept_router import ConceptRouter
from interp.steering.neuron_attribution import NeuronScale, attribution, mlp_width, top_neurons

if TYPE_CHECKING:
    from interp.core.model import Model

NAMES = {"python": "Python", "cpp": "C++", "java": "Java", "julia": "Julia", "rust": "Rust",
         "javascript": "JavaScript", "go": "Go", "c": "C", "csharp": "C#"}
FITTED = ("mean", "gact")
METHODS = ("baseline", "prompt", *FITTED, "neurons")
REFINE_TARGETS = ("answer", "fence")
SITE = "hook_resid_pre"


def render(task: str, language: str | None = None) -> str:
    """The neutral prompt (the task itself) or the prompt naming `language`: the task + " Use {Name}." (one form for
    every task, so the two prompts differ only by that sentence)."""
    return task if language is None else f"{task} Use {NAMES[canonical(language)]}."


@dataclass(frozen=True)
class Split:
    train: list[Behavior]
    val: list[Behavior]
    test: list[Behavior]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_tasks(tasks: Sequence[Behavior], n_val: int, n_test: int, n_train: int | None = None, seed: int = 0) -> Split:
    """Test, validation and training tasks, disjoint, drawn by task id with a seeded shuffle (the same ids on
    every machine, whatever the file order): test first, then validation, then training (all the rest, or
    `n_train`)."""
    ids = sorted(t.id for t in tasks)
    if len(set(ids)) != len(ids):
        raise InterpError("task ids must be unique")
    rest = len(ids) - n_val - n_test
    if n_val < 1 or n_test < 1 or rest < 1 or (n_train is not None and not 1 <= n_train <= rest):
        raise InterpError(f"{len(ids)} tasks cannot give {n_test} test, {n_val} validation and "
                          f"{n_train if n_train is not None else 'the rest as'} training tasks (each at least 1)")
    random.Random(seed).shuffle(ids)
    by_id = {t.id: t for t in tasks}
    take = lambda part: [by_id[i] for i in part]  # noqa: E731
    train = ids[n_test + n_val:][:n_train] if n_train is not None else ids[n_test + n_val:]
    return Split(take(train), take(ids[n_test:n_test + n_val]), take(ids[:n_test]))


@dataclass
class ConceptsConfig:
    """Everything the run depends on (see the module docstring for what each step does)."""

    targets: tuple[str, ...] = ("cpp", "java", "rust")
    methods: tuple[str, ...] = FITTED  # the fitted methods; "baseline" and "prompt" always run
    seed: int = 0
    n_test: int = 45
    n_val: int = 30
    n_train: int | None = None  # None: every remaining task (135 of the 210 bundled ones)
    k: int = 3  # centroids per layer (G-ACT's "few steering directions")
    candidate_layers: tuple[int, ...] | None = None  # None: a third and a half of the depth
    candidate_alphas: tuple[float, ...] = (2.0, 4.0)
    n_select: int = 6  # validation tasks generated per candidate (layer, alpha)
    select_tokens: int = 64
    max_new_tokens: int = 96
    batch_size: int = 16
    C: float = 1.0  # inverse L2 strength of the probes (scikit-learn's convention)
    refine: bool = True
    refine_target: str = "answer"  # "answer" | "fence"
    n_refine: int = 16
    refine_tokens: int = 16
    refine_epochs: int = 4
    refine_lr: float = 0.03
    refine_batch: int = 8
    neurons: bool = True  # also run the paper's static neuron-attribution baseline ("neurons")
    neuron_k: int = 1  # neurons scaled: the highest attributions over all layers (the paper: the single highest)
    neuron_scales: tuple[float, ...] = (2.0, 4.0, 8.0)  # candidate factors on their activations, chosen on validation
    n_neuron_fit: int | None = None  # training tasks the attribution averages over (None: all of them)
    n_timing: int = 8  # test prompts timed with the router vs plain generate
    timing_tokens: int = 32
    timing_runs: int = 2
    n_examples: int = 2

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        self.methods = tuple(self.methods)
        self.candidate_alphas = tuple(self.candidate_alphas)
        self.neuron_scales = tuple(self.neuron_scales)
        if self.candidate_layers is not None:
            self.candidate_layers = tuple(self.candidate_layers)

    def check(self, n_tasks: int, model: "Model | None" = None) -> None:
        """Raise InterpError on any bad setting; without a model only what needs none (before loading one)."""
        if not self.targets:
            raise InterpError("give at least one target language")
        self.targets = tuple(canonical(t) for t in self.targets)
        bad = [m for m in self.methods if m not in FITTED]
        if bad or not self.methods:
            raise InterpError(f"unknown method {bad[0] if bad else None!r}; use one or both of {', '.join(FITTED)}")
        if self.refine_target not in REFINE_TARGETS:
            raise InterpError(f"refine_target must be one of {', '.join(REFINE_TARGETS)}, got {self.refine_target!r}")
        ints = {"n_test": self.n_test, "n_val": self.n_val, "k": self.k, "n_select": self.n_select,
                "select_tokens": self.select_tokens, "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size,
                "n_refine": self.n_refine, "refine_tokens": self.refine_tokens, "refine_epochs": self.refine_epochs,
                "refine_batch": self.refine_batch, "n_timing": self.n_timing, "timing_tokens": self.timing_tokens,
                "timing_runs": self.timing_runs, "neuron_k": self.neuron_k}
        for name, v in ints.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InterpError(f"{name} must be a positive integer, got {v!r}")
        if not self.candidate_alphas or not all(isinstance(a, (int, float)) and a > 0 for a in self.candidate_alphas):
            raise InterpError(f"candidate_alphas must be positive numbers, got {list(self.candidate_alphas)}")
        if not self.neuron_scales or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and
                                             math.isfinite(a) for a in self.neuron_scales):
            raise InterpError(f"neuron_scales must be finite numbers, got {list(self.neuron_scales)}")
        if self.n_neuron_fit is not None and (not isinstance(self.n_neuron_fit, int) or
                                              isinstance(self.n_neuron_fit, bool) or self.n_neuron_fit < 1):
            raise InterpError(f"n_neuron_fit must be a positive integer or None (every training task), got "
                              f"{self.n_neuron_fit!r}")
        if not self.C > 0 or not self.refine_lr > 0:
            raise InterpError(f"C and refine_lr must be positive, got {self.C!r} and {self.refine_lr!r}")
        if self.n_train is not None and (not isinstance(self.n_train, int) or isinstance(self.n_train, bool)):
            raise InterpError(f"n_train must be a positive integer or None (all the rest), got {self.n_train!r}")
        n_train = self.n_train if self.n_train is not None else n_tasks - self.n_val - self.n_test
        if n_train < 1 or n_train > n_tasks - self.n_val - self.n_test:
            raise InterpError(f"{n_tasks} tasks cannot give {self.n_test} test, {self.n_val} validation and "
                              f"{n_train} training tasks")
        if self.k > n_train:
            raise InterpError(f"k={self.k} clusters need at least as many training tasks, got {n_train}; "
                              f"lower k or use more tasks")
        if model is not None:
            for layer in self.layers_for(model):
                model.check_layer(layer, "a candidate injection layer")
            if self.neurons:  # a family without mlp.hook_post (a mixture of experts) fails here, in one line
                mlp_width(model, range(model.n_layers))

    def layers_for(self, model: "Model") -> tuple[int, ...]:
        if self.candidate_layers is not None:
            if not self.candidate_layers:
                raise InterpError("candidate_layers is empty; give at least one layer (or None for the default)")
            return self.candidate_layers
        return tuple(sorted({round(model.n_layers / 3), round(model.n_layers / 2)}))


# ----- activations, clusters and probes -----

def last_token_acts(model: "Model", prompts: Sequence[str], batch_size: int = 16) -> Float[Tensor, "n layer d"]:
    """`hook_resid_pre` of every layer at the last prompt token (chat-formatted prompts)."""
    return model.capture(prompts, SITE, positions="last", batch_size=batch_size).stack(SITE)


def cluster(diffs: Float[Tensor, "n layer d"], k: int, seed: int = 0) -> tuple[Float[Tensor, "layer k d"], Int[Tensor, "n layer"]]:
    """k-means (scikit-learn, seeded) of the per-prompt differences at each layer: centroids and labels."""
    from sklearn.cluster import KMeans

    if k > diffs.shape[0]:
        raise InterpError(f"k={k} clusters need at least {k} differences, got {diffs.shape[0]}")
    centroids, labels = [], []
    for layer in range(diffs.shape[1]):
        x = diffs[:, layer].double().numpy()
        with warnings.catch_warnings():  # layers where the prompts do not differ yet give fewer distinct points
            warnings.simplefilter("ignore")
            km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
        centroids.append(torch.as_tensor(km.cluster_centers_, dtype=torch.float32))
        labels.append(torch.as_tensor(km.labels_, dtype=torch.long))
    return torch.stack(centroids), torch.stack(labels, 1)


def assign(diffs: Float[Tensor, "n layer d"], centroids: Float[Tensor, "layer k d"]) -> Int[Tensor, "n layer"]:
    """The nearest centroid of each difference at each layer (how held-out differences get their cluster)."""
    return torch.cdist(diffs.transpose(0, 1).float(), centroids.float()).argmin(-1).T


def fit_probes(X: Float[Tensor, "n layer d"], labels: Int[Tensor, "n layer"], k: int, C: float = 1.0,
               max_iter: int = 200) -> dict[str, Tensor]:
    """A softmax probe per layer predicting `labels` from X, all layers at once: multinomial logistic regression on
    standardised features with scikit-learn's objective, C * sum cross-entropy + ||W||^2 / 2 (bias free), by L-BFGS.
    Returns weight [layer, k, d], bias [layer, k], center and scale [layer, d] (`ConceptRouter`'s probe fields)."""
    X = X.float()
    center, std = X.mean(0), X.std(0)
    scale = torch.where(std > 1e-6, std, torch.ones_like(std))
    Z = (X - center) / scale
    W = torch.zeros(X.shape[1], k, X.shape[2], requires_grad=True)
    b = torch.zeros(X.shape[1], k, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> Tensor:
        opt.zero_grad()
        z = torch.einsum("nld,lkd->nlk", Z, W) + b
        loss = C * F.cross_entropy(z.reshape(-1, k), labels.reshape(-1), reduction="sum") + 0.5 * (W ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return {"weight": W.detach(), "bias": b.detach(), "center": center, "scale": scale}


def probe_accuracy(probe: dict[str, Tensor], X: Float[Tensor, "n layer d"], labels: Int[Tensor, "n layer"]) -> Float[Tensor, "layer"]:
    z = torch.einsum("nld,lkd->nlk", (X.float() - probe["center"]) / probe["scale"], probe["weight"]) + probe["bias"]
    return (z.argmax(-1) == labels).float().mean(0)


def majority_share(labels: Int[Tensor, "n layer"], k: int) -> Float[Tensor, "layer"]:
    """Accuracy of always guessing each layer's most common cluster: the probes' chance level."""
    counts = F.one_hot(labels, k).sum(0)  # [layer, k]
    return counts.amax(-1).float() / labels.shape[0]


# ----- refinement -----

def target_logprob(model: "Model", prompt_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]],
                   interventions: Sequence) -> Float[Tensor, "n"]:
    """Mean log-probability per token of each row's target tokens right after its prompt, under `interventions`
    (differentiable in whatever they add; the model's weights take no gradient)."""
    lens = torch.tensor([len(t) for t in target_ids])
    T = int(lens.max())
    batch = model.pad([list(p) + list(t) for p, t in zip(prompt_ids, target_ids)])
    out = forward(model, batch, edits=interventions, logits=T + 1).logits
    assert out is not None  # logits were asked for
    logits = out[:, :-1].float()
    logp = logits.log_softmax(-1).gather(-1, batch.input_ids[:, -T:, None].to(logits.device))[..., 0].cpu()
    mask = torch.arange(T)[None, :] >= (T - lens)[:, None]  # left padding: row i's targets are its last lens[i]
    return (logp * mask).sum(1) / lens


def refine_targets(model: "Model", tasks: Sequence[str], language: str, how: str, tokens: int) -> list[list[int]]:
    """Target token ids per task: the first `tokens` tokens of the model's greedy answer to the language-named
    prompt ("answer"), or the code-fence opening "```{tag}\\n" ("fence")."""
    if how == "fence":
        ids = model.tokenizer(f"```{language}\n", add_special_tokens=False).input_ids
        return [list(ids)] * len(tasks)
    answers = model.generate([render(t, language) for t in tasks], max_new_tokens=tokens, progress=False)
    out = [model.tokenizer(a, add_special_tokens=False).input_ids[:tokens] for a in answers]
    return [ids if ids else model.tokenizer(f"```{language}\n", add_special_tokens=False).input_ids
            for ids in out]


def refine(model: "Model", router: ConceptRouter, prompts: Sequence[str], targets: Sequence[Sequence[int]],
           acts: Float[Tensor, "n layer d"], n_train: int, options: ConceptsConfig) -> tuple[ConceptRouter, list[float]]:
    """Gradient refinement of the router's probes (weights and bias; centroids and model frozen). Minimised: the mean
    over rows of -(mean log-probability per target token given the neutral prompt, with alpha times the probes'
    probability-weighted mixture of the centroids added at the injection layers, every position) plus
    ||W||^2 / (2 C n_train), the probes' own penalty per training task. Adam, `refine_epochs` epochs of batches
    of `refine_batch`. Returns the refined router and the mean loss of each epoch."""
    weight, bias = router.weight.clone().requires_grad_(True), router.bias.clone().requires_grad_(True)
    opt = torch.optim.Adam([weight, bias], lr=options.refine_lr)
    prompt_ids = model.encode(model.prepare_prompts(prompts))
    gen = torch.Generator().manual_seed(options.seed)
    curve = []
    for _ in tqdm(range(options.refine_epochs), desc="refine", unit="epoch", disable=len(prompts) < 16):
        total = 0.0
        for chunk in torch.randperm(len(prompts), generator=gen).split(options.refine_batch):
            rows = chunk.tolist()
            with torch.enable_grad():
                soft = router.with_probe(weight, bias).soft_interventions(acts[chunk])
                lp = target_logprob(model, [prompt_ids[i] for i in rows], [targets[i] for i in rows], soft)
                loss = -lp.mean() + (weight ** 2).sum() / (2 * options.C * n_train)
                grads = torch.autograd.grad(loss, [weight, bias])  # the probes only: the model takes no gradient
            weight.grad, bias.grad = grads
            opt.step()
            opt.zero_grad(set_to_none=True)
            total += float(loss.detach()) * len(rows)
        curve.append(total / len(prompts))
    return router.with_probe(weight.detach(), bias.detach()), curve


@torch.no_grad()
def pick_loss(model: "Model", router: ConceptRouter, prompts: Sequence[str], targets: Sequence[Sequence[int]],
              acts: Float[Tensor, "n layer d"], batch_size: int = 8) -> float:
    """The refinement's loss without the penalty, with the router used as at inference (each prompt's hard pick;
    the one vector for k = 1): mean over prompts of -(mean log-probability per target token)."""
    prompt_ids = model.encode(model.prepare_prompts(prompts))
    vectors = router.vectors(router.choose(acts))
    total = 0.0
    for s in range(0, len(prompts), batch_size):
        rows = slice(s, s + batch_size)
        total -= float(target_logprob(model, prompt_ids[rows], targets[rows], router.interventions(vectors[rows])).sum())
    return total / len(prompts)


# ----- the static neuron-attribution baseline -----

def fence_tag(model: "Model", language: str) -> tuple[list[int], list[int]]:
    """The code-fence opening "```" and the language's tag after it ("cpp" of "```cpp"), as token ids: the
    attribution scores the tag given the prompt and the opening. Where the tokenizer merges the two, the opening
    is empty and the tag is the whole "```{tag}"."""
    opening = list(model.tokenizer("```", add_special_tokens=False).input_ids)
    whole = list(model.tokenizer(f"```{canonical(language)}", add_special_tokens=False).input_ids)
    if whole[:len(opening)] == opening and len(whole) > len(opening):
        return opening, whole[len(opening):]
    return [], whole


def neuron_scores(model: "Model", tasks: Sequence[str], language: str, batch_size: int = 8
                  ) -> Float[Tensor, "layer neuron"]:
    """Every MLP neuron's attribution to the language's fence tag (`interp.steering.neuron_attribution.attribution`):
    the mean over `tasks` (neutral, chat-formatted, followed by "```") of d/ds at s = 1 of the mean log-probability
    per token of the tag, s scaling the neuron's activation at every position; i.e. the sum over positions of
    activation x gradient. Float32 [n_layers, neurons] on the CPU."""
    opening, tag = fence_tag(model, language)
    prompt_ids = [ids + opening for ids in model.encode(model.prepare_prompts(tasks))]
    total = torch.zeros(())
    for s in range(0, len(tasks), batch_size):
        rows = prompt_ids[s:s + batch_size]
        total = total + attribution(model, lambda edits: target_logprob(model, rows, [tag] * len(rows), edits).sum())
    return total / len(tasks)


def select_scale(model: "Model", tasks: Sequence[str], neurons: Sequence[tuple[int, int]], language: str,
                 options: ConceptsConfig) -> dict:
    """The factor among `options.neuron_scales` whose `NeuronScale` on `neurons` moves most validation answers to
    `language` (greedy, `select_tokens` tokens; ties: higher code share, then the factor nearest 1). One candidate:
    taken as given."""
    if len(options.neuron_scales) == 1:
        return {"scale": float(options.neuron_scales[0]), "selected_by": "given", "table": []}
    tokens = min(options.select_tokens, options.max_new_tokens)
    table = []
    for scale in options.neuron_scales:
        answers = model.generate(tasks, max_new_tokens=tokens, batch_size=len(tasks), progress=False,
                                 interventions=[NeuronScale(neurons, float(scale))])
        got = shares(answers, language)
        table.append({"scale": float(scale), "target_share": got["target_share"], "code_share": got["code_share"]})
    best = max(table, key=lambda r: (r["target_share"], r["code_share"], -abs(r["scale"] - 1.0)))
    return {"scale": best["scale"], "table": table,
            "selected_by": f"highest target share of {len(tasks)} validation answers ({tokens} tokens) with the "
                           "neurons scaled; ties: code share, then the factor nearest 1"}


# ----- evaluation -----

def shares(answers: Sequence[str], target: str | None = None) -> dict:
    """Share of answers in each language (and "none"), of code, and in `target`."""
    found = [detect(a) for a in answers]
    counts: dict[str, int] = {}
    for d in found:
        counts[d.language] = counts.get(d.language, 0) + 1
    out = {"languages": {k: round(v / len(found), 4) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])},
           "code_share": round(sum(d.is_code for d in found) / len(found), 4), "n": len(found)}
    if target is not None:
        out["target_share"] = round(sum(d.language == target for d in found) / len(found), 4)
    return out


def select(model: "Model", tasks: Sequence[str], means: dict[str, Float[Tensor, "layer d"]],
           candidates: Sequence[tuple[int, float]], options: ConceptsConfig) -> dict[str, dict]:
    """Per target language, the candidate (layer, alpha) whose mean vector moves most validation answers to it.
    Every (language, candidate, task) is one row of one batched generation, each row with its own vector and layer
    (`RowwiseAdd`)."""
    if len(candidates) == 1:
        layer, alpha = candidates[0]
        return {lang: {"layers": [layer], "alpha": alpha, "selected_by": "given", "table": []} for lang in means}
    rows = [(lang, c, t) for lang in means for c in candidates for t in tasks]
    vectors = torch.stack([alpha * means[lang][layer] for lang, (layer, alpha), _ in rows])
    tokens = min(options.select_tokens, options.max_new_tokens)
    answers = model.generate([t for _, _, t in rows], max_new_tokens=tokens, batch_size=len(rows),
                             interventions=[RowwiseAdd(vectors, [layer for _, (layer, _), _ in rows], SITE)])
    out = {}
    for lang in means:
        table = []
        for layer, alpha in candidates:
            got = [a for (lg, c, _), a in zip(rows, answers) if lg == lang and c == (layer, alpha)]
            s = shares(got, lang)
            table.append({"layer": layer, "alpha": alpha, "target_share": s["target_share"], "code_share": s["code_share"]})
        best = max(table, key=lambda r: (r["target_share"], r["code_share"], -r["alpha"], -r["layer"]))
        out[lang] = {"layers": [best["layer"]], "alpha": best["alpha"], "table": table,
                     "selected_by": f"highest target share of {len(tasks)} validation answers ({tokens} "
                                    "tokens) with the mean vector; ties: code share, smaller alpha, earlier layer"}
    return out


def count_tokens(model: "Model", answers: Sequence[str], max_new_tokens: int) -> int:
    """Generated tokens, counted by re-encoding each answer (+1 for an end-of-sequence token, up to the maximum)."""
    return sum(min(len(model.tokenizer(a, add_special_tokens=False).input_ids) + 1, max_new_tokens) for a in answers)


def time_per_token(model: "Model", router: ConceptRouter, prompts: Sequence[str], tokens: int, runs: int) -> dict:
    """Seconds per generated token with the router and with plain `generate`, on the same prompts and
    max_new_tokens, in one batch; `runs` rounds after a warm-up, the order alternating (`count_tokens`)."""
    def plain() -> Sequence[str]:
        return model.generate(prompts, max_new_tokens=tokens, batch_size=len(prompts), progress=False)

    def routed() -> Sequence[str]:
        return router.generate(model, prompts, max_new_tokens=tokens, batch_size=len(prompts), progress=False)

    per: dict[str, list[float]] = {"plain": [], "router": []}
    fns = {"plain": plain, "router": routed}
    for r in range(runs + 1):
        for name in (("plain", "router") if r % 2 else ("router", "plain")):
            t = time.perf_counter()
            answers = fns[name]()
            if r:  # round 0 warms up
                per[name].append((time.perf_counter() - t) / count_tokens(model, answers, tokens))
    med = {k: statistics.median(v) for k, v in per.items()}
    return {"plain_s_per_token": round(med["plain"], 5), "router_s_per_token": round(med["router"], 5),
            "ratio": round(med["router"] / med["plain"], 3), "prompts": len(prompts), "max_new_tokens": tokens,
            "runs": runs, "router_k": router.k}


# ----- the whole analysis -----

@dataclass
class LanguageFit:
    """What was fitted for one target language."""

    target: str
    layers: list[int]
    alpha: float
    selection: dict
    probe_accuracy: list[float]  # unrefined probes (ACT-style), validation tasks, every layer
    chance: list[float]
    refined_accuracy: dict[int, float]  # the refined probes, at the injection layers
    refine_curve: list[float]
    refine_check: dict[str, float]  # training-target loss with hard picks: before / after refinement, mean vector
    routers: dict[str, ConceptRouter]  # method -> router
    neurons: "NeuronFit | None" = None  # the static neuron-attribution baseline (neurons=True)


@dataclass
class NeuronFit:
    """The static neuron-attribution baseline for one target language: which neurons, by how much."""

    target: str
    neurons: list[tuple[int, int]]  # (layer, neuron index at mlp.hook_post), highest attribution first
    scores: list[float]  # their attributions (mean d log p(tag) / d scale, per training task)
    layer_max: list[float]  # the highest attribution in each layer
    scale: float  # the factor on their activations (chosen on validation unless one was given)
    selection: dict  # selected_by and the validation table
    fit_tasks: list[str]  # ids of the training tasks the attribution averaged over

    @property
    def intervention(self) -> NeuronScale:
        return NeuronScale(self.neurons, self.scale)


@dataclass
class ConceptsResult(Result):
    title = "Concept steering: which language a code model writes (G-ACT)"
    model: str
    options: ConceptsConfig
    split: dict
    fits: dict[str, LanguageFit]
    table: dict[str, dict[str, dict]]  # target -> method -> shares
    baseline: dict
    timing: dict
    answers: list[dict] = field(default_factory=list, repr=False)
    examples: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def router(self, target: str, method: str = "gact") -> ConceptRouter:
        target = canonical(target)
        if target not in self.fits or method not in self.fits[target].routers:
            have = [f"{t}/{m}" for t, f in self.fits.items() for m in f.routers]
            raise InterpError(f"no {method} router for {target} in this result; it has {', '.join(have)}")
        return self.fits[target].routers[method]

    def departures(self) -> dict[str, str]:
        o = self.options
        target = (f"the first {o.refine_tokens} tokens of the model's greedy answer to the language-named prompt"
                  if o.refine_target == "answer" else "the code-fence opening (```tag)")
        return {
            "refine_target": (f"the probes minimise the mean negative log-probability of {target}, given the neutral "
                              f"prompt with their soft choice injected, plus their L2 penalty; offline, "
                              f"{o.refine_epochs} epochs over {o.n_refine} training tasks (the paper's loss is not "
                              "public; it refines online)") if o.refine else "refine=False: probes not refined (ACT)",
            "refine_layers": "only the injection layers' probes are refined; the figure across layers shows the "
                             "unrefined probes",
            "probe_input": "the probes read the unsteered prompt activation (one extra forward of the prompt), not the "
                           "stream already steered at earlier layers",
            "pick": "one pick per prompt, at its last token, kept for every generated token",
            "layers": "one injection layer and alpha per language (chosen on validation tasks with the mean vector, "
                      "unless given); the paper steers a subset of layers chosen by hand",
            "prompt_form": "the language is named by appending ' Use {Name}.' to the task",
            **(self.neuron_departures() if o.neurons else {}),
        }

    def neuron_departures(self) -> dict[str, str]:
        """Where the static neuron-attribution baseline departs from the paper (whose code is not public)."""
        o = self.options
        out = {
            "neuron_score": "'the highest activated MLP weight for a C++ or CPP token' is read as the highest "
                            "attribution: gradient x activation at mlp.hook_post summed over positions (the "
                            "first-order effect of scaling the neuron's weight) of the mean log-probability of the "
                            "language's fence tag; the paper's exact score is not public",
            "neuron_prompts": (f"the attribution averages over {self.neuron_fit_size()} neutral training tasks, each "
                               "followed by the fence opening ```, not the paper's scientific-code prompts"),
            "neuron_scale": ("the perturbation is one factor on the neurons' activations at every position (the same "
                             "as scaling their down-projection columns), "
                             + ("chosen on validation tasks among " + ", ".join(f"{v:g}" for v in o.neuron_scales)
                                if len(o.neuron_scales) > 1 else f"given ({o.neuron_scales[0]:g})")
                             + "; the paper's public description does not give the size of its perturbation"),
        }
        if o.neuron_k != 1:
            out["neuron_k"] = f"the {o.neuron_k} highest neurons over all layers are scaled; the paper perturbs the one"
        return out

    def neuron_fit_size(self) -> int:
        sizes = {len(f.neurons.fit_tasks) for f in self.fits.values() if f.neurons is not None}
        return sizes.pop() if len(sizes) == 1 else 0

    def summary(self) -> dict:
        return {
            "method": "G-ACT (Sharma and Raman 2025) vs one mean-difference vector (ACT-style) vs the paper's static "
                      "neuron-attribution baseline vs naming the language",
            "model": self.model, "options": asdict(self.options), "split": self.split,
            "baseline": self.baseline,
            "table": self.table,
            "chosen": {t: {"layers": f.layers, "alpha": f.alpha, "selected_by": f.selection["selected_by"],
                           "validation": f.selection["table"]} for t, f in self.fits.items()},
            "probe_accuracy": {t: {"unrefined": [round(a, 4) for a in f.probe_accuracy],
                                   "chance": [round(a, 4) for a in f.chance],
                                   "at_injection": {str(layer): {"unrefined": round(f.probe_accuracy[layer], 4),
                                                                 "refined": round(f.refined_accuracy[layer], 4)
                                                                 if layer in f.refined_accuracy else None,
                                                                 "chance": round(f.chance[layer], 4)}
                                                    for layer in f.layers},
                                   "measured_on": "validation tasks: the probe's pick vs the nearest centroid of the "
                                                  "task's own difference"} for t, f in self.fits.items()},
            "refinement": {t: {"loss_per_epoch": [round(v, 4) for v in f.refine_curve],
                               "hard_pick_loss": {k: round(v, 4) for k, v in f.refine_check.items()},
                               "hard_pick_loss_is": "mean -log p per target token on the refinement tasks, each "
                                                    "prompt's picked vector injected (before / after refinement), "
                                                    "or the mean vector"} for t, f in self.fits.items()},
            "neurons": {t: {"neurons": [list(n) for n in f.neurons.neurons],
                            "scores": [round(v, 6) for v in f.neurons.scores], "scale": f.neurons.scale,
                            "selected_by": f.neurons.selection["selected_by"],
                            "validation": f.neurons.selection["table"], "fit_tasks": len(f.neurons.fit_tasks),
                            "site": "mlp.hook_post",
                            "score_is": "mean over training tasks of d log p(fence tag) / d scale at 1 (gradient x "
                                        "activation summed over positions)"}
                        for t, f in self.fits.items() if f.neurons is not None},
            "time_per_token": self.timing,
            "departures": self.departures(),
            "examples": self.examples,
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
        }

    def figures(self) -> dict[str, go.Figure]:
        targets = list(self.table)
        methods = [m for m in METHODS if m in self.table[targets[0]]]
        figs = {}
        for key, label in (("target_share", "share of test answers in the target language"),
                           ("code_share", "share of test answers that are code")):
            fig = go.Figure([go.Bar(x=[NAMES[t] for t in targets], y=[self.table[t][m][key] for t in targets], name=m)
                             for m in methods])
            fig.update_layout(title=f"{label.capitalize()} ({self.split['test']} test tasks)", barmode="group",
                              yaxis=dict(title=label, range=[0, 1]), xaxis_title="target language")
            figs[key.replace("_share", "_shares")] = fig
        fig = go.Figure()
        for t, f in self.fits.items():
            layers = list(range(len(f.probe_accuracy)))
            fig.add_trace(go.Scatter(x=layers, y=f.probe_accuracy, mode="lines+markers", name=f"{NAMES[t]}: probe"))
            fig.add_trace(go.Scatter(x=layers, y=f.chance, mode="lines", line=dict(dash="dot"),
                                     name=f"{NAMES[t]}: majority cluster"))
            if f.refined_accuracy:
                fig.add_trace(go.Scatter(x=list(f.refined_accuracy), y=list(f.refined_accuracy.values()), mode="markers",
                                         marker=dict(symbol="star", size=14), name=f"{NAMES[t]}: refined probe"))
        fig.update_layout(title=f"Per-layer probe accuracy (k={self.options.k} clusters, validation tasks)",
                          xaxis_title="layer (hook_resid_pre)", yaxis=dict(title="accuracy", range=[0, 1.05]))
        figs["probe_accuracy"] = fig
        fig = go.Figure()
        for t, f in self.fits.items():
            rows = f.selection["table"]
            if rows:
                fig.add_trace(go.Bar(x=[f"L{r['layer']} a={r['alpha']:g}" for r in rows], y=[r["target_share"] for r in rows],
                                     name=NAMES[t]))
        fig.update_layout(title="Validation: target share with the mean vector per candidate (layer, alpha)",
                          barmode="group", yaxis=dict(title="target share", range=[0, 1]))
        figs["selection"] = fig
        if any(f.neurons is not None for f in self.fits.values()):
            figs["neuron_attribution"] = self.neuron_figure()
        return figs

    def neuron_figure(self) -> go.Figure:
        """Per layer, the highest neuron attribution to each target language's fence tag, the neurons the baseline
        scales starred."""
        fig = go.Figure()
        for t, f in self.fits.items():
            if f.neurons is None:
                continue
            fig.add_trace(go.Scatter(x=list(range(len(f.neurons.layer_max))), y=f.neurons.layer_max,
                                     mode="lines+markers", name=f"{NAMES[t]}: best neuron of the layer"))
            fig.add_trace(go.Scatter(x=[layer for layer, _ in f.neurons.neurons], y=f.neurons.scores, mode="markers",
                                     marker=dict(symbol="star", size=14),
                                     text=[f"L{layer} N{j}, x{f.neurons.scale:g}" for layer, j in f.neurons.neurons],
                                     name=f"{NAMES[t]}: scaled (x{f.neurons.scale:g})"))
        fig.update_layout(title="Static neuron attribution: d log p(fence tag) / d neuron scale (training tasks)",
                          xaxis_title="layer (mlp.hook_post)", yaxis_title="attribution")
        return fig

    def save_artifacts(self, directory) -> None:
        import json

        from interp.io import write_text

        write_text(directory / "answers.jsonl", "".join(json.dumps(a) + "\n" for a in self.answers))


def run(model: "Model", data: Sequence[Behavior] | None = None, config: ConceptsConfig | None = None,
        checkpoint: str | os.PathLike | Checkpoint | None = None) -> ConceptsResult:
    """The whole comparison on the programming tasks `data` (default: the bundled code_tasks); see the module
    docstring.

    `checkpoint`: a folder where the run records its finished units as it goes (`interp.core.progress`): the
    captures, each language's clusters and probes, the selection, each refinement, each neuron attribution and
    choice of factor, each set of test answers and the timing. A rerun with the same folder and settings resumes
    there and returns the Result an uninterrupted run returns; other settings are refused."""
    options = config or ConceptsConfig()
    tasks = list(data) if data is not None else read_behaviors(dataset_path("code_tasks"))
    options.check(len(tasks), model)
    split = split_tasks(tasks, options.n_val, options.n_test, options.n_train, options.seed)
    progress = Progress.open(checkpoint, "concepts", {"config": asdict(options), "model": model_settings(model),
                                                      "tasks": digest(tasks)})
    seconds: dict[str, float] = {}
    bs = options.batch_size
    provenance = {"model": model.fingerprint, "kind": SITE, "seed": options.seed, "k": options.k,
                  "prompt_form": "task + ' Use {Name}.'", "n_train_tasks": len(split.train)}

    t = time.perf_counter()
    fit_tasks = [x.behavior for x in split.train + split.val]
    n_tr = len(split.train)
    neutral = progress.unit("capture/neutral", lambda: last_token_acts(model, fit_tasks, bs))
    diffs = {lang: progress.unit(f"capture/{lang}", lambda: last_token_acts(
        model, [render(x, lang) for x in fit_tasks], bs) - neutral) for lang in options.targets}
    seconds["capture"] = time.perf_counter() - t

    t = time.perf_counter()
    means = {lang: d[:n_tr].double().mean(0).float() for lang, d in diffs.items()}
    clusters, probes, accuracy, chance = {}, {}, {}, {}

    def fit_clusters(d: Tensor) -> dict:
        centroids, labels = cluster(d[:n_tr], options.k, options.seed)
        probe = fit_probes(neutral[:n_tr], labels, options.k, options.C)
        val_labels = assign(d[n_tr:], centroids)
        return {"centroids": centroids, "probe": probe, "accuracy": probe_accuracy(probe, neutral[n_tr:], val_labels),
                "chance": majority_share(val_labels, options.k)}

    for lang, d in diffs.items():
        fitted = progress.unit(f"clusters/{lang}", lambda: fit_clusters(d))
        clusters[lang], probes[lang], accuracy[lang], chance[lang] = (fitted["centroids"], fitted["probe"],
                                                                      fitted["accuracy"], fitted["chance"])
    seconds["clusters_and_probes"] = time.perf_counter() - t

    t = time.perf_counter()
    candidates = list(product(options.layers_for(model), options.candidate_alphas))
    chosen = progress.unit("selection", lambda: select(model, [x.behavior for x in split.val[:options.n_select]], means,
                                                       candidates, options))
    seconds["selection"] = time.perf_counter() - t

    t = time.perf_counter()
    fits: dict[str, LanguageFit] = {}
    refine_tasks = [x.behavior for x in split.train[:options.n_refine]]
    for lang in options.targets:
        layers, alpha = chosen[lang]["layers"], chosen[lang]["alpha"]
        prov = {**provenance, "target": lang, "layers": layers, "alpha": alpha}
        routers: dict[str, ConceptRouter] = {}
        refined_acc: dict[int, float] = {}
        curve: list[float] = []
        check: dict[str, float] = {}
        if "mean" in options.methods:
            routers["mean"] = ConceptRouter.fixed(means[lang][layers], layers, alpha, {**prov, "method": "mean"})
        if "gact" in options.methods:
            p = {name: v[layers] for name, v in probes[lang].items()}
            router = ConceptRouter(tuple(layers), clusters[lang][layers], p["weight"], p["bias"], p["center"],
                                   p["scale"], alpha, {**prov, "method": "gact", "refined": options.refine})
            if options.refine:
                def refined(lang: str = lang, layers: list[int] = layers, alpha: float = alpha,
                            router: ConceptRouter = router) -> dict:
                    targets = refine_targets(model, refine_tasks, lang, options.refine_target, options.refine_tokens)
                    acts = neutral[:len(refine_tasks)][:, layers]
                    mean_router = ConceptRouter.fixed(means[lang][layers], layers, alpha)
                    check = {"before": pick_loss(model, router, refine_tasks, targets, acts, options.refine_batch),
                             "mean_vector": pick_loss(model, mean_router, refine_tasks, targets, acts, options.refine_batch)}
                    router, curve = refine(model, router, refine_tasks, targets, acts, n_tr, options)
                    check["after"] = pick_loss(model, router, refine_tasks, targets, acts, options.refine_batch)
                    val_labels = assign(diffs[lang][n_tr:][:, layers], router.centroids)
                    picks = router.choose(neutral[n_tr:][:, layers])
                    accuracy = {str(layer): float((picks[:, j] == val_labels[:, j]).float().mean())
                                for j, layer in enumerate(layers)}
                    return {"weight": router.weight, "bias": router.bias, "curve": curve, "check": check,
                            "accuracy": accuracy}

                tuned = progress.unit(f"refine/{lang}", refined)
                router = router.with_probe(tuned["weight"], tuned["bias"])
                curve, check = tuned["curve"], tuned["check"]
                refined_acc = {int(layer): a for layer, a in tuned["accuracy"].items()}
            routers["gact"] = router
        fits[lang] = LanguageFit(lang, layers, alpha, chosen[lang], accuracy[lang].tolist(), chance[lang].tolist(),
                                 refined_acc, curve, check, routers)
    seconds["fit_routers"] = time.perf_counter() - t

    if options.neurons:  # the static neuron-attribution baseline: training tasks attribute, validation picks a factor
        t = time.perf_counter()
        neuron_tasks = split.train[:options.n_neuron_fit]
        for lang in options.targets:
            scores = progress.unit(f"neurons/{lang}/attribution", lambda: neuron_scores(
                model, [x.behavior for x in neuron_tasks], lang, options.refine_batch))
            top, top_scores = top_neurons(scores, options.neuron_k)
            picked = progress.unit(f"neurons/{lang}/selection", lambda: select_scale(
                model, [x.behavior for x in split.val[:options.n_select]], top, lang, options))
            fits[lang].neurons = NeuronFit(lang, top, top_scores, scores.amax(-1).tolist(), picked["scale"],
                                           picked, [x.id for x in neuron_tasks])
        seconds["fit_neurons"] = time.perf_counter() - t

    t = time.perf_counter()
    test = split.test
    neutral_prompts = [x.behavior for x in test]
    answers: dict[tuple[str, str], Sequence[str]] = {}
    answers[("", "baseline")] = progress.unit("answers/baseline", lambda: list(model.generate(
        neutral_prompts, max_new_tokens=options.max_new_tokens, batch_size=bs)))
    for lang in options.targets:
        answers[(lang, "prompt")] = progress.unit(f"answers/{lang}/prompt", lambda: list(model.generate(
            [render(p, lang) for p in neutral_prompts], max_new_tokens=options.max_new_tokens, batch_size=bs)))
        for method, router in fits[lang].routers.items():
            answers[(lang, method)] = progress.unit(f"answers/{lang}/{method}", lambda: list(router.generate(
                model, neutral_prompts, options.max_new_tokens, bs)))
        fitted_neurons = fits[lang].neurons
        if fitted_neurons is not None:
            answers[(lang, "neurons")] = progress.unit(f"answers/{lang}/neurons", lambda: list(model.generate(
                neutral_prompts, max_new_tokens=options.max_new_tokens, batch_size=bs,
                interventions=[fitted_neurons.intervention])))
    seconds["test_generation"] = time.perf_counter() - t

    compared = (*options.methods, *(("neurons",) if options.neurons else ()))
    table = {lang: {"baseline": shares(answers[("", "baseline")], lang),
                    **{m: shares(answers[(lang, m)], lang) for m in ("prompt", *compared)}}
             for lang in options.targets}
    rows = [{"task": x.id, "target": None, "method": "baseline", "prompt": x.behavior, "response": a,
             "language": detect(a).language} for x, a in zip(test, answers[("", "baseline")])]
    for (lang, method), got in answers.items():
        if lang:
            rows += [{"task": x.id, "target": lang, "method": method,
                      "prompt": render(x.behavior, lang) if method == "prompt" else x.behavior, "response": a,
                      "language": detect(a).language} for x, a in zip(test, got)]
    first = options.targets[0]
    examples = [{"task": x.behavior, "target": first,
                 **{m: answers[("", m) if m == "baseline" else (first, m)][i][:300] for m in
                    ("baseline", "prompt", *compared)}} for i, x in enumerate(test[:options.n_examples])]

    t = time.perf_counter()
    timed = fits[first].routers.get("gact") or fits[first].routers[options.methods[0]]
    timing = progress.unit("timing", lambda: time_per_token(model, timed, neutral_prompts[:options.n_timing],
                                                            min(options.timing_tokens, options.max_new_tokens),
                                                            options.timing_runs))
    timing["router"] = f"{first}/{timed.provenance.get('method')}"
    seconds["timing"] = time.perf_counter() - t

    split_info = {**split.sizes(), "seed": options.seed, "test_ids": [x.id for x in test],
                  "by": "task id, seeded shuffle; disjoint"}
    return ConceptsResult(model.name, options, split_info, fits, table, shares(answers[("", "baseline")]), timing,
                          rows, examples, seconds)
