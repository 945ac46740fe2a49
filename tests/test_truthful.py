"""Truthful directions (ITI): the head intervention, continuation scoring, TruthfulQA's metrics, folds, the analysis,
its command line and notebook, and clear errors on bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from analyses import truthful as T
from interp.cli import app
from interp.core.interventions import Add
from interp.core.likelihood import continuations
from interp.data.truthfulqa import Question, folds, mc_metrics, mc_scores, read_questions
from interp.errors import InterpError
from interp.steering.head_steering import HeadSteering
from tests.conftest import tol
from tests.test_notebooks import PLOTLY, execute, shown

runner = CliRunner()
PROMPTS = ["Q: What color is the sky? A:", "Q: Where is Paris located? A:", "Q: What do cats eat? A:"]


def _steering(model, heads=((3, 1), (10, 4)), alpha=5.0) -> HeadSteering:
    g = torch.Generator().manual_seed(0)
    return HeadSteering(list(heads), torch.randn(len(heads), model.d_head, generator=g), torch.tensor([1.0, 2.0][:len(heads)]),
                        alpha, {"model": model.fingerprint})


# ----- the intervention -----

def test_head_steering_changes_exactly_the_chosen_heads_on_every_row(smol):
    """positions="all": the shift at every real position of every row; the default ("last", the reference's):
    at each row's last token only (tests/test_iti_positions.py checks generation and scoring)."""
    steer = _steering(smol, heads=((3, 1), (3, 5)))
    sites = ["blocks.3.attn.hook_z", "blocks.2.attn.hook_z"]
    plain = smol.capture(PROMPTS, sites, positions="all")
    with smol.intervene(steer):
        last = smol.capture(PROMPTS, sites, positions="all")
    with smol.intervene(steer.at("all")):
        steered = smol.capture(PROMPTS, sites, positions="all")
    z, z0 = last["blocks.3.attn.hook_z"], plain["blocks.3.attn.hook_z"]
    assert torch.equal(z[:, :-1], z0[:, :-1])  # left padding: the last column is every row's last token
    assert torch.allclose(z[:, -1] - z0[:, -1], steer.offsets(smol)[3][None].expand_as(z[:, -1]), atol=tol(smol.dtype))
    mask = plain.mask[..., None, None]
    diff = (steered["blocks.3.attn.hook_z"] - plain["blocks.3.attn.hook_z"]) * mask
    want = steer.offsets(smol)[3][None, None] * mask
    assert torch.allclose(diff, want, atol=tol(smol.dtype))  # the shift, on every row and every real position
    other = [h for h in range(smol.n_heads) if h not in (1, 5)]
    real = diff[plain.mask]  # [real positions, head, d_head]
    assert real[:, other].abs().max() == 0 and real[:, [1, 5]].abs().amax(-1).min() > 0  # other heads untouched
    assert torch.equal(steered["blocks.2.attn.hook_z"], plain["blocks.2.attn.hook_z"])  # the layer before: untouched
    assert all(not layer.self_attn.o_proj._forward_pre_hooks for layer in smol.layers)  # no hook left


def test_head_steering_acts_on_cached_generation_steps(smol):
    """Shifting hook_z by an offset at every position is adding o_proj(offset) to the attention output: generation
    under both must agree token for token (`Add` is known to act on every generated token) and differ from plain
    generation. (The default, last-token form is checked against a by-hand loop in tests/test_iti_positions.py.)"""
    steer = _steering(smol, heads=((6, 2),), alpha=60.0).at("all")
    o_proj = smol.layers[6].self_attn.o_proj
    vector = o_proj(steer.offsets(smol)[6].reshape(-1).to(smol.dtype)).detach()
    prompts = ["Write a short poem about the sea.", "Name three fruits."]
    a = smol.generate(prompts, max_new_tokens=12, interventions=[steer])
    b = smol.generate(prompts, max_new_tokens=12, interventions=[Add(vector, 6, kind="hook_attn_out")])
    plain = smol.generate(prompts, max_new_tokens=12)
    assert a == b and a != plain


def test_head_steering_save_load_and_bad_inputs(smol, qwen, tmp_path):
    steer = _steering(smol)
    steer.save(tmp_path / "iti")
    back = HeadSteering.load(tmp_path / "iti", model=smol)
    assert back.heads == steer.heads and torch.equal(back.directions, steer.directions) and back.alpha == steer.alpha
    assert back.positions == steer.positions == "last"
    with pytest.raises(InterpError, match="another model"):
        HeadSteering.load(tmp_path / "iti", model=qwen)
    with pytest.raises(InterpError, match="out of range"):
        HeadSteering([(0, smol.n_heads)], torch.ones(1, smol.d_head), torch.ones(1)).hooks(smol)
    with pytest.raises(InterpError, match="directions"):
        HeadSteering([(0, 0)], torch.ones(2, smol.d_head), torch.ones(1))
    with pytest.raises(InterpError, match="between 1 and"):
        T.TruthfulConfig(heads=smol.n_layers * smol.n_heads + 1).check(smol, 20)


# ----- scoring and metrics -----

def test_continuation_logprobs_equal_one_full_forward_per_row(smol):
    pre = "Interpret each question literally.\n\nQ: What is 2+2?\nA: 4.\n\n"
    prompts = [pre + "Q: What color is the sky?\nA:", pre + "Q: Where is Paris?\nA:"]
    options = [[" Blue.", " Green, mostly."], [" France.", " Germany is where it is."]]
    got = continuations(smol, prompts, options, sites="blocks.4.hook_resid_post")
    full = continuations(smol, prompts, options, sites="blocks.4.hook_resid_post", use_prefix_cache=False)
    for i, (p, opts) in enumerate(zip(prompts, options)):
        start = len(smol.encode([p])[0])
        for j, c in enumerate(opts):
            ids = smol.encode([p + c])[0]
            with torch.no_grad():
                lp = smol.hf(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            want = sum(float(lp[t - 1, ids[t]]) for t in range(start, len(ids)))
            assert abs(float(got.logprobs[i][j]) - want) < 1e-3 and abs(float(full.logprobs[i][j]) - want) < 1e-3
    assert torch.allclose(got.acts["blocks.4.hook_resid_post"], full.acts["blocks.4.hook_resid_post"], atol=tol(smol.dtype))


def test_mc1_mc2_by_hand():
    """Two questions: (true answers' log-probs, false answers' log-probs, best index) and the hand computation."""
    q1 = Question("q1", "a.", ("a.", "b."), ("c.",))
    q2 = Question("q2", "y.", ("x.", "y."), ("z.", "w."))
    lp1 = torch.log(torch.tensor([0.5, 0.1, 0.2]))  # best 0.5 > false 0.2: MC1 1; MC2 0.6 / 0.8
    lp2 = torch.log(torch.tensor([0.3, 0.05, 0.1, 0.2]))  # best (y) 0.05 < 0.2: MC1 0; MC2 0.35 / 0.65
    s1, s2 = mc_scores([q1, q2], [lp1, lp2])
    assert s1["mc1"] == 1.0 and abs(s1["mc2"] - 0.75) < 1e-6 and s1["mc3"] == 0.5
    assert s2["mc1"] == 0.0 and abs(s2["mc2"] - 0.35 / 0.65) < 1e-6 and s2["mc3"] == 0.5
    assert mc_metrics(torch.tensor([-1.0]), torch.tensor([-1.0]))["mc1"] == 0.0  # a tie is not a win


def test_truthfulqa_file_and_folds(tmp_path):
    qs = read_questions(n=30)
    assert len(qs) == 30 and all(q.best in q.true and q.false for q in qs)
    parts = folds(30, 3, seed=1)
    assert sorted(i for p in parts for i in p) == list(range(30))
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert parts != folds(30, 3, seed=2)
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Best Answer,Correct Answers\nWhy?,Because,Because\n")
    with pytest.raises(InterpError, match="Incorrect Answers"):
        read_questions(bad)


# ----- the analysis -----

@pytest.fixture(scope="module")
def tiny_run(smol) -> T.TruthfulResult:
    options = T.TruthfulConfig(heads=4, alpha=5.0, n_tune=2, n_cost=2, cost_tokens=6, n_examples=1)
    return T.run(smol, read_questions(n=8), options)


def test_folds_never_share_a_question_and_fitting_ignores_held_out(tiny_run):
    tests = [set(f.test) for f in tiny_run.folds]
    assert set.union(*tests) == set(range(8)) and sum(len(t) for t in tests) == 8
    assert all(f.n_train + f.n_val + len(f.test) == 8 for f in tiny_run.folds)
    r = tiny_run
    test = tiny_run.folds[0].test
    train, val = T._split([i for i in range(8) if i not in test], 0.2, 0)
    fit = T.fit_heads(r.activations, r.labels, r.pair_question, train, val)
    noisy = r.activations.clone()
    held = torch.isin(r.pair_question, torch.tensor(test))
    noisy[held] = torch.randn_like(noisy[held]) * 100
    fit2 = T.fit_heads(noisy, r.labels, r.pair_question, train, val)
    assert torch.equal(fit.accuracy, fit2.accuracy) and torch.equal(fit.directions, fit2.directions)
    assert torch.equal(fit.sigmas, fit2.sigmas)


def test_truthful_result_reports_and_saves(tiny_run, tmp_path):
    s = tiny_run.summary()
    assert s["n_questions"] == 8 and set(s["mc2"]) == {"baseline", "iti", "gain"} and s["kl"] >= 0
    assert "training folds only" in s["fitted_on"] and s["departures"]
    assert set(tiny_run.figures()) >= {"probe_accuracy", "grid_mc2", "grid_mc1", "mc", "examples"}
    assert s["options"]["positions"] == "answer" and any("answer's first token" in d for d in s["departures"])
    tiny_run.save(tmp_path / "fit")
    back = HeadSteering.load(tmp_path / "fit")
    assert back.k == 4 and back.positions == "last"  # the reference's positions, recorded
    assert T.fitted_questions(back) == {q.question for q in read_questions(n=8)}  # `truthful eval` leaves these out
    assert json.loads((tmp_path / "fit" / "result.json").read_text())["final"]["heads"] == 4


# ----- command line and notebook -----

@pytest.fixture
def cli_smol(smol, monkeypatch):
    monkeypatch.setattr("interp.cli.common.load_model", lambda model, backend="hooks": smol)


@pytest.mark.acceptance  # an end-to-end run of the whole analysis
def test_cli_fit_eval_and_steer(cli_smol, tmp_path):
    fit = runner.invoke(app, ["truthful", "fit", "--model", "smollm2-135m-instruct", "--out", str(tmp_path / "fit"),
                              "--heads", "3", "--alpha", "4", "--max-questions", "6", "--n-cost", "2", "--examples", "1"])
    assert fit.exit_code == 0, fit.output
    assert "MC2 baseline" in fit.output and (tmp_path / "fit" / "head_steering.json").is_file()
    ev = runner.invoke(app, ["truthful", "eval", "--model", "smollm2-135m-instruct", "--intervention", str(tmp_path / "fit"),
                             "--max-questions", "3", "--n-cost", "2", "--out", str(tmp_path / "ev.json")])
    assert ev.exit_code == 0, ev.output
    got = json.loads((tmp_path / "ev.json").read_text())
    assert got["n_questions"] == 3 and set(got["mc1"]) == {"baseline", "iti"} and got["kl"] >= 0
    assert got["n_fitted_left_out"] == 6  # the first 6 questions fitted it: questions 7 to 9 were scored
    (tmp_path / "p.txt").write_text("Is the earth flat?\n")
    st = runner.invoke(app, ["steer", "--model", "smollm2-135m-instruct", "--intervention", str(tmp_path / "fit"),
                             "--prompts", str(tmp_path / "p.txt"), "--max-new-tokens", "4", "--out", str(tmp_path / "s.jsonl")])
    assert st.exit_code == 0, st.output
    assert json.loads((tmp_path / "s.jsonl").read_text())["intervention"] == str(tmp_path / "fit")


def test_cli_bad_inputs_write_nothing(cli_smol, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Best Answer\nWhy?,Because\n")
    r = runner.invoke(app, ["truthful", "eval", "--intervention", str(tmp_path), "--questions", str(bad),
                            "--out", str(tmp_path / "o.json")])
    assert r.exit_code != 0 and "Correct Answers" in str(r.exception) and not (tmp_path / "o.json").exists()
    r = runner.invoke(app, ["truthful", "fit", "--model", "smollm2-135m-instruct", "--heads", "100000",
                            "--alpha", "1", "--max-questions", "6", "--out", str(tmp_path / "fit")])
    assert r.exit_code != 0 and "between 1 and" in str(r.exception) and not (tmp_path / "fit").exists()


def test_truthful_notebook():
    nb = execute("truthful.ipynb", {"INTERP_NOTEBOOK_MODEL": "smollm2-135m-instruct", "INTERP_NOTEBOOK_N": "8"})
    for figure in ("result.figure('probe_accuracy')", "result.figure('mc')"):
        assert PLOTLY in shown(nb, figure), figure
