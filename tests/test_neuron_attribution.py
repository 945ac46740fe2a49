"""G-ACT's static neuron-attribution baseline (`interp.steering.neuron_attribution`, "neurons" in `analyses.concepts`)
on tiny random models: the attribution picks the neurons a hand computation (gradient x activation with plain torch
hooks, one unpadded prompt at a time) picks; `NeuronScale` changes exactly the chosen neurons' activations and
nothing upstream, equals the paper's weight perturbation (the down projection's columns scaled) under left padding
and generation, and leaves no hook; the analysis fits the baseline on training tasks only, picks its factor on
validation tasks only, and reports it on the test tasks beside G-ACT."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import interp
from analyses import concepts as C
from interp.data.prompts import Behavior
from interp.errors import InterpError
from interp.steering.neuron_attribution import NeuronScale, attribution, mlp_width, top_neurons
from tests.conftest import registered_hooks
from tests.tiny import tiny_model

PROMPTS = ["Write a function that reverses a string.", "Sum a list.",
           "Write a function that returns the median of a list of numbers, sorted first."]


def down_proj(model: interp.Model, layer: int) -> torch.nn.Module:
    """The module whose input is `mlp.hook_post` (the MLP's down projection), found without the site table."""
    if model.hf.config.model_type == "gpt2":
        return model.hf.transformer.h[layer].mlp.c_proj
    return model.hf.model.layers[layer].mlp.down_proj


def hand_scores(model: interp.Model, tasks: list[str], language: str) -> torch.Tensor:
    """Mean over tasks of sum over positions of activation x d(mean log p(tag)) / d activation at every down
    projection's input: plain torch hooks, one prompt at a time (no padding), no library forward."""
    opening, tag = C.fence_tag(model, language)
    total = None
    for ids in model.encode(model.prepare_prompts(tasks)):
        prompt = ids + opening
        acts: dict[int, torch.Tensor] = {}
        handles = [down_proj(model, layer).register_forward_pre_hook(
            lambda module, args, layer=layer: acts.__setitem__(layer, args[0])) for layer in range(model.n_layers)]
        try:
            with torch.enable_grad():
                logp = model.hf(torch.tensor([prompt + tag])).logits[0].float().log_softmax(-1)
                metric = sum(logp[len(prompt) + j - 1, t] for j, t in enumerate(tag)) / len(tag)
                assert all(a.requires_grad for a in acts.values())
                grads = torch.autograd.grad(metric, [acts[layer] for layer in range(model.n_layers)])
        finally:
            for h in handles:
                h.remove()
        score = torch.stack([(acts[layer][0] * g[0]).sum(0) for layer, g in enumerate(grads)]).detach()
        total = score if total is None else total + score
    assert total is not None
    return total / len(tasks)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attribution_picks_the_neurons_a_hand_computation_picks(tokenizer, family):
    model = tiny_model(family, tokenizer)
    ours = C.neuron_scores(model, PROMPTS, "cpp", batch_size=2)  # two batches, the first one left-padded
    hand = hand_scores(model, PROMPTS, "cpp")
    assert ours.shape == (model.n_layers, mlp_width(model, range(model.n_layers))) == hand.shape
    assert torch.allclose(ours, hand, atol=1e-6 + 1e-4 * float(hand.abs().max()))
    flat = hand.reshape(-1).topk(3).indices.tolist()
    width = hand.shape[1]
    neurons, scores = top_neurons(ours, 3)
    assert neurons == [(i // width, i % width) for i in flat]
    assert scores == sorted(scores, reverse=True) and abs(scores[0] - float(hand.max())) < 1e-5
    assert registered_hooks(model) == 0


def test_attribution_is_the_slope_of_the_scaling(tokenizer):
    """The score of the top neuron is the derivative of the metric with respect to scaling that neuron (a central
    difference of the metric under `NeuronScale` at 1 +- eps)."""
    model = tiny_model("llama", tokenizer)
    opening, tag = C.fence_tag(model, "java")
    ids = [p + opening for p in model.encode(model.prepare_prompts(PROMPTS))]

    def metric(edits) -> torch.Tensor:
        return C.target_logprob(model, ids, [tag] * len(ids), edits).sum()

    scores = attribution(model, metric)
    (neuron,), (score,) = top_neurons(scores, 1)
    eps = 0.05
    with torch.no_grad():
        up, down = metric([NeuronScale([neuron], 1 + eps)]), metric([NeuronScale([neuron], 1 - eps)])
    assert abs(float(up - down) / (2 * eps) - score) < 0.02 * abs(score) + 1e-5


def _capture(model, sites):
    acts = model.capture(PROMPTS, sites, positions="all", batch_size=3)
    return {s: acts[s] for s in sites}, acts.mask


def test_neuron_scale_changes_exactly_those_neurons_and_nothing_upstream(tokenizer):
    model = tiny_model("qwen2", tokenizer)
    sites = [f"blocks.{layer}.{kind}" for layer in range(model.n_layers)
             for kind in ("hook_resid_pre", "hook_attn_out", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")]
    plain, mask = _capture(model, sites)
    with model.intervene(NeuronScale([(1, 5), (1, 9)], torch.tensor([3.0, 0.0]))):
        steered, _ = _capture(model, sites)
    assert registered_hooks(model) == 0
    last = model.n_layers - 1
    for site in sites:
        a, b = plain[site][mask], steered[site][mask]  # every real position of every row (left padded)
        if site.startswith(f"blocks.{last}.mlp.hook_post"):
            others = [j for j in range(a.shape[-1]) if j not in (5, 9)]
            assert torch.equal(b[:, others], a[:, others])  # the layer's other neurons keep their values
            assert torch.allclose(b[:, 5], 3 * a[:, 5]) and torch.equal(b[:, 9], torch.zeros_like(a[:, 9]))
        elif site.startswith(f"blocks.{last}.hook_mlp_out") or site.startswith(f"blocks.{last}.hook_resid_post"):
            assert not torch.allclose(a, b)  # downstream of the down projection: changed
        else:
            assert torch.equal(a, b), site  # upstream (and the earlier layer): untouched


def test_neuron_scale_is_the_weight_perturbation_under_left_padding_and_generation(tokenizer):
    """Scaling neurons' activations = scaling their columns of the down projection (the paper's perturbation), on a
    left-padded batch, prompt logits and greedy generation (KV cache, shared prefix) alike; the model is not changed."""
    model = tiny_model("llama", tokenizer)
    neurons, factor = [(0, 3), (1, 17), (1, 40)], 6.0
    weights = [down_proj(model, layer).weight.detach().clone() for layer in range(model.n_layers)]
    edited_hf = copy.deepcopy(model.hf)
    edited = interp.Model(edited_hf, tokenizer, "tiny-llama-edited")
    with torch.no_grad():
        for layer, j in neurons:
            down_proj(edited, layer).weight[:, j] *= factor
    scale = NeuronScale(neurons, factor)
    with model.intervene(scale):
        logits = model.logits(PROMPTS, last_only=False)
        answers = model.generate(PROMPTS, max_new_tokens=8, batch_size=3)
    assert registered_hooks(model) == 0
    assert torch.allclose(logits, edited.logits(PROMPTS, last_only=False), atol=1e-4)
    assert answers == edited.generate(PROMPTS, max_new_tokens=8, batch_size=3)
    assert answers != model.generate(PROMPTS, max_new_tokens=8, batch_size=3)
    assert all(torch.equal(w, down_proj(model, layer).weight) for layer, w in enumerate(weights))


def test_neuron_scale_refuses_bad_inputs(tokenizer):
    model = tiny_model("llama", tokenizer)
    width = mlp_width(model, range(model.n_layers))
    for args, message in ((([],), "one or more"), (([(0, 1), (0, 1)],), "distinct"), (([(0, -1)],), "non-negative"),
                          (([(0, 1)], torch.ones(2)), "2"), (([(0, 1)], float("nan")), "finite")):
        with pytest.raises(InterpError, match=message):
            NeuronScale(*args)
    for neurons, message in (([(0, width)], "out of range"), ([(model.n_layers, 0)], "layer")):
        with pytest.raises(InterpError, match=message):
            with model.intervene(NeuronScale(neurons, 2.0)):
                model.logits(PROMPTS[:1])
    assert registered_hooks(model) == 0
    with pytest.raises(InterpError, match="k=0"):
        top_neurons(torch.zeros(2, 4), 0)


# ----- the baseline in the analysis -----

TASKS = [Behavior(f"Write a function number {i} that {verb} a list.", None, f"t{i:02d}")
         for i, verb in enumerate(["sorts", "reverses", "sums", "counts", "filters", "maps", "zips", "splits",
                                   "joins", "rotates", "shuffles", "flattens", "chunks", "dedupes"])]
CONFIG = C.ConceptsConfig(targets=("cpp", "rust"), methods=("gact",), n_test=3, n_val=3, n_train=6, k=2, n_select=2,
                          select_tokens=4, max_new_tokens=5, refine=False, n_timing=1, timing_tokens=2, timing_runs=1,
                          n_examples=1, neuron_k=2, n_neuron_fit=4)


def test_baseline_is_fitted_on_training_tasks_and_scored_on_test_tasks_only(tokenizer, monkeypatch):
    model = tiny_model("qwen2", tokenizer)
    seen: dict[str, list[str]] = {"attribution": [], "selection": []}
    scores, select = C.neuron_scores, C.select_scale

    def spy_scores(model, tasks, language, batch_size=8):
        seen["attribution"] += list(tasks)
        return scores(model, tasks, language, batch_size)

    def spy_select(model, tasks, neurons, language, options):
        seen["selection"] += list(tasks)
        return select(model, tasks, neurons, language, options)

    monkeypatch.setattr(C, "neuron_scores", spy_scores)
    monkeypatch.setattr(C, "select_scale", spy_select)
    result = C.run(model, TASKS, CONFIG)
    split = C.split_tasks(TASKS, CONFIG.n_val, CONFIG.n_test, CONFIG.n_train, CONFIG.seed)
    train, val, test = ({x.behavior for x in part} for part in (split.train, split.val, split.test))
    assert seen["attribution"] and set(seen["attribution"]) <= train and len(set(seen["attribution"])) == 4
    assert seen["selection"] and set(seen["selection"]) <= val  # the factor is chosen on validation tasks
    assert not (set(seen["attribution"]) | set(seen["selection"])) & test  # the fit never sees the test tasks

    s = result.summary()
    assert set(s["table"]["cpp"]) == {"baseline", "prompt", "gact", "neurons"}
    for lang in CONFIG.targets:
        fit = result.fits[lang].neurons
        assert fit is not None and len(fit.neurons) == 2 and fit.scale in CONFIG.neuron_scales
        assert set(fit.fit_tasks) <= {x.id for x in split.train}
        assert not set(fit.fit_tasks) & set(s["split"]["test_ids"])
        row = s["neurons"][lang]
        assert row["neurons"] == [list(n) for n in fit.neurons] and row["fit_tasks"] == 4
        assert len(row["validation"]) == len(CONFIG.neuron_scales) and row["scale"] == fit.scale
        # the row in the table is the test tasks' answers under exactly this intervention
        rows = [a for a in result.answers if a["target"] == lang and a["method"] == "neurons"]
        assert [a["task"] for a in rows] == s["split"]["test_ids"]
        want = model.generate([x.behavior for x in split.test], max_new_tokens=CONFIG.max_new_tokens,
                              interventions=[NeuronScale(fit.neurons, fit.scale)])
        assert [a["response"] for a in rows] == want
        assert s["table"][lang]["neurons"] == C.shares(want, lang) and s["table"][lang]["neurons"]["n"] == 3
    assert {"neuron_score", "neuron_prompts", "neuron_scale", "neuron_k"} <= set(s["departures"])
    figures = result.figures()
    assert "neuron_attribution" in figures and any(b.name == "neurons" for b in figures["target_shares"].data)
    assert registered_hooks(model) == 0


def test_baseline_can_be_left_out_and_bad_options_are_one_line_errors(tokenizer):
    model = tiny_model("qwen2", tokenizer)
    result = C.run(model, TASKS, dataclasses.replace(CONFIG, neurons=False, targets=("cpp",)))
    s = result.summary()
    assert "neurons" not in s["table"]["cpp"] and s["neurons"] == {} and "neuron_attribution" not in result.figures()
    assert not any(k.startswith("neuron") for k in s["departures"])
    for bad, message in (({"neuron_k": 0}, "neuron_k"), ({"neuron_scales": ()}, "neuron_scales"),
                         ({"neuron_scales": (float("inf"),)}, "neuron_scales"), ({"n_neuron_fit": 0}, "n_neuron_fit")):
        with pytest.raises(InterpError, match=message):
            C.ConceptsConfig(**bad).check(210)


def test_baseline_steps_resume_after_an_interrupt_without_recomputing(tokenizer, tmp_path, monkeypatch):
    from tests.test_resume import Counted, comparable, units

    model = tiny_model("qwen2", tokenizer)
    scored = Counted(monkeypatch, C, "neuron_scores")
    reference = C.run(model, TASKS, CONFIG, checkpoint=tmp_path / "whole")
    assert scored.calls == 2

    Counted(monkeypatch, C, "neuron_scores", stop=2)  # the second language's attribution
    with pytest.raises(KeyboardInterrupt):
        C.run(model, TASKS, CONFIG, checkpoint=tmp_path / "cut")
    assert units(tmp_path / "cut")[-2:] == ["neurons/cpp/attribution", "neurons/cpp/selection"]
    scored, selected = Counted(monkeypatch, C, "neuron_scores"), Counted(monkeypatch, C, "select_scale")
    resumed = C.run(model, TASKS, CONFIG, checkpoint=tmp_path / "cut")
    assert scored.calls == 1 and selected.calls == 1  # rust's only: cpp's units are read back
    assert comparable(resumed) == comparable(reference) and resumed.answers == reference.answers
    assert resumed.fits["cpp"].neurons == reference.fits["cpp"].neurons
