"""Concept steering (G-ACT): the router picks a vector per row and injects it at every token, leaves no hook, saves
and loads with checks; the fitting steps; the analysis, its command line and notebook; clear errors on bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from analyses import concepts as C
from interp.cli import app
from interp.core.interventions import Add, RowwiseAdd
from interp.data.prompts import Behavior
from interp.errors import InterpError
from interp.judges.languages import detect
from interp.steering.concept_router import ConceptRouter
from tests.conftest import registered_hooks, tol
from tests.test_notebooks import PLOTLY, execute, shown

runner = CliRunner()
PROMPTS = ["Write a function that reverses a string.", "Write a function that returns the sum of a list of numbers."]
LAYER = 6


def _two_way_router(model, alpha: float = 8.0) -> tuple[ConceptRouter, torch.Tensor]:
    """A k=2 router at LAYER whose probe sends PROMPTS[0] to vector 0 and PROMPTS[1] to vector 1."""
    plain = ConceptRouter.fixed(torch.zeros(1, model.d_model), [LAYER], provenance={"model": model.fingerprint})
    acts = plain.activations(model, PROMPTS)[:, 0]  # [2, d]
    u = acts[0] - acts[1]
    g = torch.Generator().manual_seed(0)
    centroids = torch.randn(1, 2, model.d_model, generator=g)
    router = ConceptRouter((LAYER,), centroids, torch.stack([u, -u])[None], torch.zeros(1, 2),
                           ((acts[0] + acts[1]) / 2)[None], torch.ones(1, model.d_model), alpha,
                           {"model": model.fingerprint, "target": "cpp", "method": "gact"})
    return router, centroids[0]


# ----- the router -----

def test_router_picks_per_row_and_injects_at_every_position(smol):
    router, centroids = _two_way_router(smol)
    choice = router.route(smol, PROMPTS)
    assert choice[:, 0].tolist() == [0, 1]
    site = f"blocks.{LAYER}.hook_resid_pre"
    plain = smol.capture(PROMPTS, site, positions="all")
    with smol.intervene(*router.interventions(router.vectors(choice))):
        steered = smol.capture(PROMPTS, site, positions="all")
    diff = (steered[site] - plain[site])[plain.mask]  # every real position of both rows
    rows = torch.arange(2)[:, None].expand_as(plain.mask)[plain.mask]
    assert torch.allclose(diff, router.alpha * centroids[rows], atol=tol(smol.dtype) * 10)


def test_router_generation_equals_rowwise_add_at_every_generated_token(smol):
    """The router's answers are those of `RowwiseAdd` with each row's picked vector (which acts on every decoding
    step), differ from plain generation, and no hook is left behind."""
    router, centroids = _two_way_router(smol)
    got = router.generate(smol, PROMPTS, max_new_tokens=10)
    want = smol.generate(PROMPTS, max_new_tokens=10, batch_size=2,
                         interventions=[RowwiseAdd(router.alpha * centroids, [LAYER, LAYER])])
    swapped = smol.generate(PROMPTS, max_new_tokens=10, batch_size=2,
                            interventions=[RowwiseAdd(router.alpha * centroids.flip(0), [LAYER, LAYER])])
    assert got == want and got != swapped and got != smol.generate(PROMPTS, max_new_tokens=10)
    assert registered_hooks(smol) == 0


def test_fixed_router_is_add(smol):
    v = torch.randn(1, smol.d_model, generator=torch.Generator().manual_seed(1))
    router = ConceptRouter.fixed(v, [LAYER], alpha=6.0, provenance={"model": smol.fingerprint})
    assert router.k == 1 and router.route(smol, PROMPTS).tolist() == [[0], [0]]
    want = smol.generate(PROMPTS, max_new_tokens=8, interventions=[Add(v[0], LAYER, 6.0)])
    assert router.generate(smol, PROMPTS, max_new_tokens=8) == want
    with pytest.raises(InterpError, match="needs each prompt's activations"):
        _two_way_router(smol)[0].interventions()
    with pytest.raises(InterpError, match="single string"):
        router.generate(smol, PROMPTS[0])


def test_router_save_load_round_trip_and_refusals(smol, tmp_path):
    router, _ = _two_way_router(smol)
    router.save(tmp_path / "r")
    back = ConceptRouter.load(tmp_path / "r", model=smol)
    assert back.layers == router.layers and back.alpha == router.alpha and back.provenance == router.provenance
    assert all(torch.equal(getattr(back, f), getattr(router, f)) for f in ("centroids", "weight", "bias", "center", "scale"))
    other = ConceptRouter.fixed(torch.ones(1, smol.d_model), [LAYER],
                                provenance={"model": {**smol.fingerprint, "name": "qwen2.5-coder-0.5b-instruct"}})
    other.save(tmp_path / "other")
    with pytest.raises(InterpError, match="another model"):
        ConceptRouter.load(tmp_path / "other", model=smol)
    meta = json.loads((tmp_path / "r" / "router.json").read_text())
    (tmp_path / "r" / "router.json").write_text(json.dumps({**meta, "k": 5}))
    with pytest.raises(InterpError, match="do not belong together"):
        ConceptRouter.load(tmp_path / "r")
    with pytest.raises(InterpError, match="shape"):
        ConceptRouter((1,), torch.ones(1, 2, 4), torch.ones(1, 3, 4), torch.ones(1, 2), torch.ones(1, 4), torch.ones(1, 4))


# ----- the fitting steps -----

def test_split_is_by_id_seeded_and_disjoint():
    tasks = [Behavior(f"task {i}", None, f"t{i:02d}") for i in range(20)]
    a = C.split_tasks(tasks, n_val=4, n_test=5, seed=3)
    b = C.split_tasks(list(reversed(tasks)), n_val=4, n_test=5, seed=3)
    ids = lambda part: [t.id for t in part]  # noqa: E731
    assert (ids(a.train), ids(a.val), ids(a.test)) == (ids(b.train), ids(b.val), ids(b.test))  # file order is irrelevant
    assert a.sizes() == {"train": 11, "val": 4, "test": 5} and len(set(ids(a.train) + ids(a.val) + ids(a.test))) == 20
    assert ids(C.split_tasks(tasks, 4, 5, seed=4).test) != ids(a.test)
    with pytest.raises(InterpError, match="cannot give"):
        C.split_tasks(tasks, n_val=10, n_test=10)


def test_render_names_the_language_in_one_form():
    task = "Write a function that returns the median of a list of numbers."
    assert C.render(task) == task and C.render(task, "C++") == task + " Use C++." and C.render(task, "rs").endswith("Use Rust.")


def test_clusters_and_probes_on_separable_data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(2, 3, 16, generator=g) * 10  # [layer, cluster, d]
    labels = torch.arange(30) % 3
    diffs = centers[:, labels].transpose(0, 1) + torch.randn(30, 2, 16, generator=g) * 0.1  # [n, layer, d]
    centroids, found = C.cluster(diffs, 3, seed=0)
    assert centroids.shape == (2, 3, 16) and torch.equal(C.assign(diffs, centroids), found)
    for layer in range(2):  # the clusters are the true ones, up to naming
        assert len({(int(a), int(b)) for a, b in zip(labels, found[:, layer])}) == 3
    acts = torch.randn(30, 2, 16, generator=g) + centers[:, labels].transpose(0, 1) / 5  # the probe's input
    probe = C.fit_probes(acts, found, 3)
    assert C.probe_accuracy(probe, acts, found).min() == 1.0
    assert torch.allclose(C.majority_share(found, 3), torch.full((2,), 1 / 3))
    with pytest.raises(InterpError, match="k=40"):
        C.cluster(diffs, 40)


def test_target_logprob_matches_a_plain_forward(smol):
    prompt_ids = smol.encode(smol.prepare_prompts(PROMPTS))
    targets = [smol.tokenizer("```cpp\n", add_special_tokens=False).input_ids, smol.tokenizer(" Sure", add_special_tokens=False).input_ids]
    got = C.target_logprob(smol, prompt_ids, targets, [])
    for i, (p, t) in enumerate(zip(prompt_ids, targets)):
        with torch.no_grad():
            lp = smol.hf(torch.tensor([p + t])).logits[0].float().log_softmax(-1)
        want = sum(float(lp[len(p) + j - 1, tok]) for j, tok in enumerate(t)) / len(t)
        assert abs(float(got[i]) - want) < 1e-3


def test_refine_trains_the_probe_only(smol):
    router, _ = _two_way_router(smol, alpha=2.0)
    acts = router.activations(smol, PROMPTS)
    targets = [smol.tokenizer("```cpp\n", add_special_tokens=False).input_ids] * 2
    before = [p.detach().clone() for p in smol.hf.parameters()][:3]
    options = C.ConceptsConfig(refine_epochs=2, refine_batch=2, refine_lr=0.5)
    refined, curve = C.refine(smol, router, PROMPTS, targets, acts, 2, options)
    assert len(curve) == 2 and not torch.equal(refined.weight, router.weight)
    assert torch.equal(refined.centroids, router.centroids)  # the steering vectors stay fixed
    assert all(p.grad is None and not p.requires_grad for p in smol.hf.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, list(smol.hf.parameters())[:3]))


def test_bad_options_are_one_line_errors(smol):
    with pytest.raises(InterpError, match="unknown language 'klingon'"):
        C.ConceptsConfig(targets=("klingon",)).check(210)
    with pytest.raises(InterpError, match="k=8 clusters need at least as many training tasks, got 5"):
        C.ConceptsConfig(k=8, n_train=5).check(210)
    with pytest.raises(InterpError, match="unknown method"):
        C.ConceptsConfig(methods=("act",)).check(210)
    with pytest.raises(InterpError, match="candidate injection layer"):
        C.ConceptsConfig(candidate_layers=(99,)).check(210, smol)


# ----- the analysis through the command line -----

FIT = ["--model", "smollm2-135m-instruct", "--target", "c++", "--n-train", "6", "--n-val", "2", "--n-test", "2",
       "--max-new-tokens", "6", "--layer", str(LAYER), "--alpha", "4", "--k", "2", "--refine-epochs", "1"]


@pytest.fixture
def cli_smol(smol, monkeypatch):
    monkeypatch.setattr("interp.cli.common.load_model", lambda model, backend="hooks": smol)


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("interp.cli.common.load_model", refuse)


@pytest.mark.acceptance  # an end-to-end run of the whole analysis
def test_cli_fit_then_steer(cli_smol, smol, tmp_path):
    fit = runner.invoke(app, ["concepts", "fit", *FIT, "--out", str(tmp_path / "fit")])
    assert fit.exit_code == 0, fit.output + repr(fit.exception)
    assert "gact" in fit.output and "target share" in fit.output
    for name in ("router.safetensors", "router.json", "result.json", "report.html", "answers.jsonl"):
        assert (tmp_path / "fit" / name).is_file(), name
    s = json.loads((tmp_path / "fit" / "result.json").read_text())
    assert set(s["table"]["cpp"]) == {"baseline", "prompt", "gact", "neurons"} and s["chosen"]["cpp"]["layers"] == [LAYER]
    assert len(s["neurons"]["cpp"]["neurons"]) == 1 and s["neurons"]["cpp"]["fit_tasks"] == 6  # the paper's one neuron
    assert s["split"]["train"] == 6 and len(s["probe_accuracy"]["cpp"]["unrefined"]) == smol.n_layers
    assert set(s["departures"]) >= {"refine_target", "probe_input", "pick"} and s["time_per_token"]["ratio"] > 0
    router = ConceptRouter.load(tmp_path / "fit", model=smol)
    assert router.k == 2 and router.provenance["target"] == "cpp" and router.provenance["method"] == "gact"
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "steered.jsonl"
    st = runner.invoke(app, ["concepts", "steer", "--model", "smollm2-135m-instruct", "--steering", str(tmp_path / "fit"),
                             "--prompts", str(prompts), "--max-new-tokens", "6", "--out", str(out)])
    assert st.exit_code == 0, st.output + repr(st.exception)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = router.generate(smol, PROMPTS, max_new_tokens=6)
    assert [r["prompt"] for r in rows] == PROMPTS and [r["response"] for r in rows] == want
    assert [r["language"] for r in rows] == [detect(a).language for a in want]


def test_cli_bad_inputs_fail_before_the_model_and_write_nothing(no_model, tmp_path):
    for args, message in ((["--target", "klingon"], "unknown language 'klingon'"),
                          (["--target", "cpp", "--k", "50", "--n-train", "6"], "k=50"),
                          (["--target", "cpp", "--method", "act"], "unknown method"),
                          (["--target", "cpp", "--neuron-k", "0"], "neuron_k must be a positive integer")):
        r = runner.invoke(app, ["concepts", "fit", *args, "--out", str(tmp_path / "fit")])
        assert r.exit_code != 0 and message in str(r.exception), (args, r.output, r.exception)
        assert not (tmp_path / "fit").exists()
    prompts = tmp_path / "p.txt"
    prompts.write_text("Write a function.\n")
    r = runner.invoke(app, ["concepts", "steer", "--steering", str(tmp_path / "missing"), "--prompts", str(prompts),
                            "--out", str(tmp_path / "o.jsonl")])
    assert r.exit_code != 0 and "does not exist" in str(r.exception) and not (tmp_path / "o.jsonl").exists()


def test_cli_refuses_a_router_of_another_model(cli_smol, smol, tmp_path):
    ConceptRouter.fixed(torch.ones(1, 896), [LAYER], provenance={
        "model": {"name": "qwen2.5-coder-0.5b-instruct", "model_type": "qwen2", "n_layers": 24, "d_model": 896}}
    ).save(tmp_path / "qwen_router")
    prompts = tmp_path / "p.txt"
    prompts.write_text("Write a function.\n")
    r = runner.invoke(app, ["concepts", "steer", "--steering", str(tmp_path / "qwen_router"), "--prompts", str(prompts),
                            "--out", str(tmp_path / "o.jsonl")])
    assert r.exit_code != 0 and "another model" in str(r.exception) and not (tmp_path / "o.jsonl").exists()


def test_concepts_notebook():
    nb = execute("concepts.ipynb", {"INTERP_NOTEBOOK_MODEL": "smollm2-135m-instruct", "INTERP_NOTEBOOK_N": "4"})
    for figure in ("result.figure('target_shares')", "result.figure('probe_accuracy')"):
        assert PLOTLY in shown(nb, figure), figure
    page = shown(nb, "result")["text/html"]
    assert "table.cpp.gact.target_share" in page and "Plotly.newPlot" in page
