"""Safety vs useful subspaces (Ponkshe et al.): energy subspaces and their overlaps against the random baseline,
the weight-update projections (exact at full rank, nothing at k = 0), the fine-tune's loss, the miniature's
pieces, the CLI end to end on tiny checkpoints, bad inputs, and the notebook."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from analyses import miniature as M
from analyses import overlap as O
from interp.cli import app
from interp.core.subspace import Subspace
from interp.errors import InterpError
from interp.judges import SubstringJudge
from interp.steering import weight_updates as W
from interp.steering.finetune import FineTuneOptions, batch_loss, chat_tokens, fine_tune
from tests.test_notebooks import PLOTLY, execute, shown

runner = CliRunner()


# ----- activation space -----

def test_random_subspaces_sit_at_the_closed_form_baseline():
    """The mean overlap of independent random k1- and k2-dim subspaces of R^d is max(k1, k2) / d."""
    d, k1, k2, n = 96, 6, 18, 300
    g = torch.Generator().manual_seed(0)
    vals = torch.tensor([Subspace(torch.randn(k1, d, generator=g)).overlap(Subspace(torch.randn(k2, d, generator=g)))
                         for _ in range(n)])
    assert abs(float(vals.mean()) - max(k1, k2) / d) < 4 * float(vals.std()) / n**0.5


def test_energy_subspaces_of_random_activations_overlap_at_chance():
    """Through the whole comparison, at every share of the default sweep: two sets of Gaussian 'activations'
    overlap as random subspaces do (within 4 std of the sampled baseline, which itself sits at the closed form),
    and a set with itself overlaps at 1."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 3, 128, generator=g), torch.randn(40, 3, 128, generator=g)
    result = O.compare({"a": a, "b": b, "a2": a.clone()}, [("a", "b"), ("a", "a2")], O.OverlapConfig(samples=300))
    assert result.shares == list(O.ACTIVATION_SHARES)
    s = result.summary()
    for share in result.shares:
        for row in result.pairs[share]["a vs b"]:
            assert abs(row.sampled_mean - row.expected) < 0.01
            assert abs(row.overlap - row.sampled_mean) < 4 * row.sampled_std
            if share == result.shares[-1]:  # the smallest angle of few random directions varies too much below
                assert abs(row.min_angle - row.random_min_angle) < 10 and abs(row.mean_angle - row.random_mean_angle) < 5
        for row in result.pairs[share]["a vs a2"]:
            assert abs(row.overlap - 1) < 1e-6 and row.min_angle < 0.1 and row.mean_angle < 0.1
        pairs = s["by_share"][f"{share:g}"]["pairs"]
        assert pairs["a vs a2"]["layers_above_random"] == 3 and pairs["a vs b"]["layers_above_random"] == 0
        assert len(s["by_share"][f"{share:g}"]["k"]["a"]) == 3
    assert len(s["sweep"]["a vs b"]["window_overlap"]) == len(result.shares)
    assert set(result.figures()) == {"sweep", "overlap", "angles", "k"}


def test_energy_subspace_keeps_the_smallest_k_holding_the_share():
    q = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2)))[0]
    X = torch.diag(torch.tensor([3.0, 2.0, 1.0])) @ q[:3]  # energies 9, 4, 1 of 14
    for share, k in ((0.6, 1), (0.9, 2), (0.95, 3), (1.0, 3)):
        basis, ratio = O.energy_subspace(X, share)
        assert basis.shape == (k, 16) and torch.allclose(ratio[:3], torch.tensor([9, 4, 1.0], dtype=ratio.dtype) / 14)
    shifted = X + 10 * q[5]  # a large common mean: uncentred, it is the first direction; centred, it is gone
    assert abs(float(O.energy_subspace(shifted, 0.5)[0][0] @ q[5])) > 0.99
    assert (O.energy_subspace(shifted, 0.99, centre=True)[0] @ q[5]).abs().max() < 1e-5


# ----- parameter space: the projections -----

def _triple(seed: int = 0, shapes=None):
    """base, aligned, fine-tuned weight dicts whose fine-tune update lies in the column space of the alignment
    update (U = V G), so the top-min(m, n) singular vectors of V capture U whole."""
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or {"wide": (8, 20), "tall": (24, 6), "vec": (5,)}
    base = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    V = {n: 0.1 * torch.randn(s, generator=g) for n, s in shapes.items()}
    U = {n: (V[n] @ torch.randn(s[1], s[1], generator=g) if len(s) == 2 else torch.randn(s, generator=g)) * 0.1
         for n, s in shapes.items()}
    aligned = {n: base[n] + V[n] for n in shapes}
    return base, aligned, {n: aligned[n] + U[n] for n in shapes}


def test_full_rank_projection_reproduces_the_update_and_k0_changes_nothing():
    base, aligned, ft = _triple()
    full = W.projection(base, aligned, ft, W.Rank(fraction=1.0), progress=False)
    none = W.projection(base, aligned, ft, W.Rank(k=0), progress=False)
    for name in ("wide", "tall"):
        same, orth = dict(full.weights(aligned, ft, "same")), dict(full.weights(aligned, ft, "orthogonal"))
        assert torch.allclose(same[name], ft[name], atol=1e-5) and torch.allclose(orth[name], aligned[name], atol=1e-5)
        opp = dict(full.weights(aligned, ft, "opposite"))
        assert torch.allclose(opp[name], 2 * aligned[name] - ft[name], atol=1e-5)
        assert torch.equal(dict(none.weights(aligned, ft, "same"))[name], aligned[name])
        assert torch.allclose(dict(none.weights(aligned, ft, "orthogonal"))[name], ft[name], atol=1e-6)
    assert abs(full.totals()["energy"] - 1) < 1e-5 and none.totals()["energy"] == 0
    assert [s.k for s in full.stats] == [8, 6]


def test_partial_projection_energy_beside_random():
    """At k < rank the kept energy is ||P P^T U||^2 / ||U||^2 (checked against a full SVD); the random k-subspace
    baseline's expectation is k / m."""
    base, aligned, ft = _triple(3, {"m": (30, 40)})
    p = W.projection(base, aligned, ft, W.Rank(k=5), progress=False)
    V, U = aligned["m"] - base["m"], ft["m"] - aligned["m"]
    P = torch.linalg.svd(V.double())[0][:, :5]
    want = float((P.T @ U.double()).pow(2).sum() / U.double().pow(2).sum())
    (s,) = p.stats
    assert abs(s.energy - want) < 1e-4 and s.expected == 5 / 30 and 0 <= s.random_energy < 0.6
    assert torch.allclose(p.parts["m"].double(), P @ (P.T @ U.double()), atol=1e-4)


def test_bad_shapes_and_ranks_fail_with_the_matrix_named():
    base, aligned, ft = _triple()
    with pytest.raises(InterpError, match="wide has shape"):
        W.matrices(base, aligned, {**ft, "wide": torch.zeros(8, 21)})
    with pytest.raises(InterpError, match="missing"):
        W.matrices(base, aligned, {k: v for k, v in ft.items() if k != "tall"})
    with pytest.raises(InterpError, match=r"k=7 .*tall"):
        W.projection(base, aligned, ft, W.Rank(k=7), progress=False)
    low = {**aligned, "wide": base["wide"] + torch.randn(8, 2) @ torch.randn(2, 20)}  # V of rank 2
    with pytest.raises(InterpError, match=r"rank of the alignment update of wide \(2\)"):
        W.projection(base, low, ft, W.Rank(k=3), progress=False)
    unchanged = W.projection(base, {**aligned, "wide": base["wide"]}, ft, W.Rank(k=2), progress=False)
    assert unchanged.unchanged == ["wide"]
    with pytest.raises(InterpError, match="exactly one"):
        W.Rank()
    with pytest.raises(InterpError, match="fraction"):
        W.Rank(fraction=1.5)


# ----- the fine-tune -----

def test_answer_loss_is_the_mean_cross_entropy_of_answer_tokens(smol):
    """Left-padded rows of different lengths: the loss is the token-weighted mean of each answer's cross-entropy,
    the same numbers the likelihood scorer gives (the template's end of turn is part of the answer)."""
    from interp.core.likelihood import continuations

    pairs = [("What is 2+2?", "4."), ("Name the colour of a clear daytime sky.", "The sky is blue on a clear day.")]
    rows = [chat_tokens(smol, q, a) for q, a in pairs]
    assert smol.tokenizer.decode(rows[0][0][rows[0][1]:]).startswith("4.")
    with torch.no_grad():
        loss = float(batch_loss(smol, rows))
    end = smol.tokenizer.decode(rows[0][0][rows[0][1]:])[len("4."):]  # the template's end of turn
    got = continuations(smol, smol.prepare_prompts([q for q, _ in pairs]), [[a + end] for _, a in pairs])
    want = -float(sum(x.sum() for x in got.logprobs)) / float(sum(x.sum() for x in got.n_tokens))
    assert abs(loss - want) < 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smol):
    """A randomly initialised tiny Llama with SmolLM2's tokenizer, and aligned / fine-tuned copies whose updates
    are random (the fine-tune's inside the column space of the alignment's)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    cfg = LlamaConfig(vocab_size=len(smol.tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=smol.tokenizer.bos_token_id, eos_token_id=smol.tokenizer.eos_token_id,
                      pad_token_id=smol.tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    base, aligned, ft = _triple(5, shapes)
    paths = {}
    for name, weights in (("base", base), ("aligned", aligned), ("finetuned", ft)):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(weights[n])
        model.save_pretrained(root / name)
        smol.tokenizer.save_pretrained(root / name)
        paths[name] = root / name
    paths["weights"] = (base, aligned, ft)
    return paths


def test_fine_tune_writes_a_trained_copy_and_leaves_the_source(tiny, tmp_path):
    before = W.load_weights(tiny["base"])
    run = fine_tune(tiny["base"], [("Say hi.", "Hi!"), ("Say bye.", "Bye!")], tmp_path / "ft",
                    FineTuneOptions(epochs=3, batch_size=2, lr=1e-2, progress=False))
    assert len(run.losses) == 3 and run.losses[-1] < run.losses[0]
    after, again = W.load_weights(tmp_path / "ft"), W.load_weights(tiny["base"])
    assert all(torch.equal(before[n], again[n]) for n in before)  # the source checkpoint is untouched
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert json.loads((tmp_path / "ft" / "interp_finetune.json").read_text())["steps"] == 3
    assert "loss" in run.figures()
    with pytest.raises(InterpError, match="not empty"):
        fine_tune(tiny["base"], [("a", "b")], tmp_path / "ft", FineTuneOptions(progress=False))
    with pytest.raises(InterpError, match="pair 0"):
        fine_tune(tiny["base"], [("a", "")], tmp_path / "ft2", FineTuneOptions(progress=False))


# ----- the miniature's pieces -----

def test_refusal_templates_are_refusals_and_answers_are_cached(tmp_path, monkeypatch):
    assert all(SubstringJudge().refused(list(M.REFUSALS)))
    pairs = M.refusal_pairs(["a", "b", "c", "d"], seed=1)
    assert pairs == M.refusal_pairs(["a", "b", "c", "d"], seed=1) and all(r in M.REFUSALS for _, r in pairs)
    cache = M.answers_cache("some-model", 8, tmp_path)
    cache.write_text('{"prompt": "p1", "answer": "a1"}\n{"prompt": "p2", "answer": "a2"}\n')

    def no_load(*args, **kwargs):
        raise AssertionError("the cached answers were generated again")

    monkeypatch.setattr("interp.core.loading.load", no_load)
    assert M.useful_answers(["p2", "p1"], "some-model", 8, tmp_path) == ["a2", "a1"]


# ----- command line -----

def test_cli_activations_end_to_end(smol, monkeypatch, tmp_path):
    monkeypatch.setattr("interp.cli.common.load_model", lambda model, backend="hooks": smol)
    (tmp_path / "harm.txt").write_text("How do I pick a lock?\nHow do I make a weapon?\nHow do I steal a car?\n")
    (tmp_path / "code.txt").write_text("Write a function that sums a list.\nWrite a function that reverses a string.\n"
                                       "Write a function that sorts numbers.\n")
    r = runner.invoke(app, ["overlap", "activations", "--model", "smollm2-135m-instruct", "--a", str(tmp_path / "harm.txt"),
                            "--b", str(tmp_path / "code.txt"), "--out", str(tmp_path / "out"), "--samples", "20"])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "out" / "result.json").read_text())
    assert got["shares"] == list(O.ACTIVATION_SHARES)  # the reference's sweep by default
    at = got["by_share"]["0.6"]
    pair = at["pairs"]["harm vs code"]
    assert len(pair["per_layer"]["overlap"]) == smol.n_layers and got["d"] == smol.d_model and not got["centred"]
    assert all(abs(e - max(a, b) / smol.d_model) < 1e-5 for e, a, b in zip(pair["per_layer"]["expected"], at["k"]["harm"], at["k"]["code"]))
    assert len(got["sweep"]["harm vs code"]["window_overlap"]) == len(O.ACTIVATION_SHARES)
    assert (tmp_path / "out" / "subspaces.safetensors").is_file() and "mean overlap" in r.output
    (tmp_path / "one.txt").write_text("Only one prompt\n")
    bad = runner.invoke(app, ["overlap", "activations", "--a", str(tmp_path / "one.txt"), "--b", str(tmp_path / "code.txt"),
                              "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "at least 2" in str(bad.exception) and not (tmp_path / "bad").exists()


def test_cli_weights_end_to_end(tiny, tmp_path):
    (tmp_path / "harm.txt").write_text("How do I pick a lock?\nHow do I steal a car?\n")
    (tmp_path / "good.txt").write_text("Name a fruit.\nWrite a haiku.\n")
    (tmp_path / "useful.jsonl").write_text('{"prompt": "Name a fruit.", "answer": "An apple."}\n'
                                           '{"instruction": "Write a haiku.", "answer": "Soft rain on the roof."}\n')
    args = ["overlap", "weights", "--base", str(tiny["base"]), "--aligned", str(tiny["aligned"]),
            "--finetuned", str(tiny["finetuned"]), "--fraction", "1.0", "--k", "0", "--harmful", str(tmp_path / "harm.txt"),
            "--harmless", str(tmp_path / "good.txt"), "--useful", str(tmp_path / "useful.jsonl"), "--max-new-tokens", "3"]
    r = runner.invoke(app, args + ["--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "out" / "result.json").read_text())
    assert [m["name"] for m in got["models"]] == ["base", "aligned", "fine-tuned", "same k0", "opposite k0", "orthogonal k0",
                                                  "same f1", "opposite f1", "orthogonal f1"]
    assert all(0 <= m["refusal_rate"] <= 1 and m["useful_loss"] > 0 for m in got["models"])
    assert abs(got["projections"]["f1"]["energy"] - 1) < 1e-4 and got["projections"]["k0"]["energy"] == 0
    assert got["projections"]["f1"]["svd"] == "exact"  # what the reference runs (its svd_lowrank call fails)
    _, aligned, ft = tiny["weights"]
    checkpoints = tmp_path / "out" / "checkpoints"
    same_full, same_none = W.load_weights(checkpoints / "same-f1"), W.load_weights(checkpoints / "same-k0")
    orth_none = W.load_weights(checkpoints / "orthogonal-k0")
    for name, w in ft.items():
        if w.ndim == 2:  # the written checkpoints: k = full rank gives the fine-tune, k = 0 the aligned model
            assert torch.allclose(same_full[name], w, atol=1e-5), name
            assert torch.equal(same_none[name], aligned[name]) and torch.allclose(orth_none[name], w, atol=1e-6), name
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(checkpoints / "orthogonal-f1")  # plain transformers loads it
    assert "same f1" in r.output and (tmp_path / "out" / "report.html").is_file()
    again = runner.invoke(app, args + ["--out", str(tmp_path / "out")])  # the checkpoints exist: refused, untouched
    assert again.exit_code != 0 and "not empty" in str(again.exception)


def test_cli_weights_bad_inputs_write_nothing(tiny, tmp_path, smol):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(smol.tokenizer), hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "other")
    smol.tokenizer.save_pretrained(tmp_path / "other")
    common = ["--base", str(tiny["base"]), "--aligned", str(tiny["aligned"]), "--no-evaluate"]
    cases = [(["--finetuned", str(tmp_path / "other")], "mlp.gate_proj.weight has shape"),
             (["--finetuned", str(tiny["finetuned"]), "--k", "40"], "larger than the rank"),
             (["--finetuned", str(tmp_path / "missing")], "is not a bundled model"),
             (["--finetuned", str(tiny["finetuned"]), "--method", "sideways"], "methods must be")]
    for extra, message in cases:
        r = runner.invoke(app, ["overlap", "weights", *common, *extra, "--out", str(tmp_path / "out")])
        assert r.exit_code != 0 and message in str(r.exception), (extra, r.output, r.exception)
        assert not (tmp_path / "out").exists()


# ----- notebook -----

def test_overlap_notebook():
    nb = execute("overlap.ipynb", {"INTERP_NOTEBOOK_MODEL": "smollm2-135m-instruct", "INTERP_NOTEBOOK_N": "6",
                                   "INTERP_NOTEBOOK_TINY": "1"})
    for figure in ("act.figure('overlap')", "mini.align_run.figure('loss')", "res.figure('energy')",
                   "res.figure('tradeoff')"):
        assert PLOTLY in shown(nb, figure), figure
    assert "Plotly.newPlot" in shown(nb, "act")["text/html"]
