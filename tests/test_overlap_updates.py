"""Ponkshe et al. made faithful (issue 19): the update-space comparison of a useful and a harmful fine-tune (energy
bases, their mean squared overlap, the max(k)/d baseline), the reference's SVD (exact; its `torch.linalg.svd_lowrank`
does not exist), and the activation default inside the reference's sweep. Tiny random models only (unit tier)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from analyses import overlap as O
from interp.cli import app
from interp.errors import InterpError
from interp.steering import weight_updates as W
from interp.steering.finetune import FineTuneOptions, lr_factor
from tests.tiny import tiny_model

runner = CliRunner()


def _orthonormal(d: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))[0]


# ----- the reference's linear algebra -----

def test_the_reference_svd_call_does_not_exist_so_it_runs_the_exact_svd():
    """The reference's projection calls `torch.linalg.svd_lowrank` in a try whose except runs the exact SVD: that
    name does not exist in torch (the randomized routine is `torch.svd_lowrank`), so the exact SVD always runs, and
    the projection's default is the exact top-k left singular subspace, also where the randomized method with the
    reference's settings would land elsewhere."""
    assert not hasattr(torch.linalg, "svd_lowrank") and hasattr(torch, "svd_lowrank")
    g = torch.Generator().manual_seed(0)
    V = torch.randn(120, 90, generator=g) @ torch.diag(torch.linspace(1.0, 0.8, 90))  # a slowly decaying spectrum
    exact = torch.linalg.svd(V.double())[0][:, :5]
    P = W.top_left_singular(V, 5)
    assert torch.allclose((P.double() @ P.double().T), exact @ exact.T, atol=1e-4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rough = torch.svd_lowrank(V, q=5, niter=2)[0].double()  # what the reference's call was meant to run
    assert (rough @ rough.T - exact @ exact.T).norm() > 0.1
    randomized = W.top_left_singular(V, 5, svd="randomized")
    assert randomized.shape == (120, 5)
    with pytest.raises(InterpError, match="svd must be one of exact, randomized"):
        W.top_left_singular(V, 5, svd="lowrank")


@pytest.mark.parametrize("share", [0.01, 0.3, 0.5, 0.9, 0.99, 1.0])
def test_energy_basis_holds_the_requested_share(share):
    """The basis holds at least `share` of the energy of M, and one direction fewer would not."""
    g = torch.Generator().manual_seed(1)
    M = torch.randn(40, 30, generator=g) @ torch.diag(torch.logspace(0, -2, 30))
    Q = W.energy_basis(M, share, svd="exact")
    def held(B: torch.Tensor) -> float:
        return float((B.T @ M).square().sum() / M.square().sum())

    k = Q.shape[1]
    assert held(Q) >= share - 1e-5
    if k > 1:
        assert held(Q[:, :k - 1]) < share
    assert torch.allclose(Q.T @ Q, torch.eye(k), atol=1e-5)


def test_energy_k_is_the_reference_searchsorted_rule():
    S = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert [W.energy_k(S, s) for s in (0.01, 0.6, 9 / 14, 0.9, 13 / 14, 0.95, 1.0)] == [1, 1, 1, 2, 2, 3, 3]
    with pytest.raises(InterpError, match="share must be in"):
        W.energy_k(S, 0)


def test_identical_updates_overlap_at_one_and_orthogonal_ones_at_zero():
    """Through `update_overlap`: a harmful update equal to the useful one overlaps it at 1 at every share; updates
    whose column spaces are orthogonal overlap at 0; the baseline is max(k_U, k_H) / m in every row."""
    m, n = 24, 16
    q = _orthonormal(m, 2)
    g = torch.Generator().manual_seed(3)
    left, right = q[:, :8], q[:, 8:16]  # orthogonal halves of R^24's first 16 directions
    w0 = {"a.weight": torch.randn(m, n, generator=g), "norm.weight": torch.randn(m, generator=g)}
    du = {"a.weight": left @ torch.randn(8, n, generator=g), "norm.weight": torch.randn(m, generator=g)}
    dh_orth = {"a.weight": right @ torch.randn(8, n, generator=g),
               "norm.weight": q[:, 20] * float(du["norm.weight"].norm())}
    du["norm.weight"] = q[:, 0] * 2.0  # the vectors: orthogonal directions
    useful = {k: w0[k] + du[k] for k in w0}
    same = W.update_overlap(w0, useful, useful, shares=(0.1, 0.5, 0.9, 0.99), progress=False)
    assert all(abs(r.overlap - 1) < 1e-5 for r in same.rows) and len(same.rows) == 8
    orth = W.update_overlap(w0, useful, {k: w0[k] + dh_orth[k] for k in w0}, shares=(0.1, 0.5, 0.9, 0.99),
                            progress=False)
    assert all(r.overlap < 1e-5 for r in orth.rows)
    for r in same.rows + orth.rows:
        assert r.expected == max(r.k_useful, r.k_harmful) / r.shape[0]
        assert (r.shape, r.matrix) in (((m, n), True), ((m, 1), False))
    vec = [r for r in orth.rows if not r.matrix]
    assert all(r.k_useful == r.k_harmful == 1 and r.expected == 1 / m for r in vec)  # a vector is an m x 1 matrix
    totals = orth.totals()
    assert set(totals) == {"0.1", "0.5", "0.9", "0.99"} and totals["0.9"]["all"]["tensors"] == 2


def test_random_updates_overlap_at_the_baseline():
    """Two independent random updates: the mean overlap over many tensors sits at the mean of max(k_U, k_H) / m
    (the Haar expectation the baseline states), so the comparison can read "no more than chance"."""
    g = torch.Generator().manual_seed(4)
    names = [f"p{i}" for i in range(60)]
    w0 = {n: torch.zeros(32, 12) for n in names}
    useful = {n: torch.randn(32, 12, generator=g) for n in names}
    harmful = {n: torch.randn(32, 12, generator=g) for n in names}
    c = W.update_overlap(w0, useful, harmful, shares=(0.5,), svd="exact", progress=False)
    got = torch.tensor([r.overlap for r in c.rows])
    expected = sum(r.expected for r in c.rows) / len(c.rows)
    assert abs(float(got.mean()) - expected) < 4 * float(got.std()) / math.sqrt(len(got)) + 0.01


def test_reference_svd_rule_above_ten_thousand_rows():
    """svd="reference": the exact SVD up to 10000 rows or columns, above it the reference's fallback,
    torch.svd_lowrank with q = int(min(m, n) / 4): only q singular values, and the share counts against their
    energy; svd="exact" keeps all of them."""
    g = torch.Generator().manual_seed(5)
    big = torch.randn(10_001, 8, generator=g)
    u, s = W.left_singular(big, "reference")
    assert s.shape == (2,) and u.shape == (10_001, 2)
    assert W.left_singular(big, "exact")[1].shape == (8,)
    assert W.left_singular(big[:10_000], "reference")[1].shape == (8,)
    with pytest.raises(InterpError, match="svd must be one of reference, exact"):
        W.left_singular(big, "randomized")


def test_unchanged_parameters_and_float16_differences():
    """A parameter either fine-tune left unchanged has no basis and is listed; delta_dtype="float16" subtracts
    float16 weights as the reference does, so an update below float16's resolution vanishes."""
    w0 = {"a": torch.ones(6, 4), "b": torch.ones(6, 4)}
    useful = {"a": w0["a"] + 1e-5 * torch.arange(24.0).reshape(6, 4), "b": w0["b"] + torch.eye(6, 4)}
    harmful = {"a": w0["a"] + 1e-5 * torch.arange(24.0).reshape(6, 4).flip(0), "b": w0["b"]}
    c = W.update_overlap(w0, useful, harmful, shares=(0.9,), progress=False)
    assert c.unchanged == ["b"] and [r.name for r in c.rows] == ["a"]
    with pytest.raises(InterpError, match="nothing to compare"):
        W.update_overlap(w0, useful, harmful, shares=(0.9,), delta_dtype="float16", progress=False)
    with pytest.raises(InterpError, match="delta_dtype"):
        W.update_overlap(w0, useful, harmful, delta_dtype="bfloat16", progress=False)
    with pytest.raises(InterpError, match="every share"):
        W.update_overlap(w0, useful, harmful, shares=(0.0,), progress=False)


# ----- activation space: the default -----

def test_activation_default_is_the_reference_sweep():
    """The default shares are the reference's `energy_list` for activations (0.01 to 0.6), uncentred; 0.9 is no
    longer the default."""
    options = O.OverlapConfig()
    assert options.shares == (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6) and not options.centre
    assert all(0.01 <= s <= 0.6 for s in options.shares) and 0.9 not in options.shares
    with pytest.raises(InterpError, match="every share"):
        O.OverlapConfig(shares=(0.5, 1.5)).check()


def test_uncentred_subspaces_collapse_to_the_mean_inside_the_sweep():
    """Sets that share a large mean: uncentred, one direction (the mean) holds every share of the sweep, so k = 1
    at every layer and the overlap is the squared cosine of the means; centred, k grows and the overlap falls."""
    g = torch.Generator().manual_seed(6)
    mean = 20 * torch.randn(64, generator=g)
    a, b = mean + torch.randn(30, 2, 64, generator=g), mean + torch.randn(30, 2, 64, generator=g)
    un = O.compare({"a": a, "b": b}, options=O.OverlapConfig(samples=20, angle_samples=2))
    s = un.summary()
    assert s["shares"] == list(O.ACTIVATION_SHARES)
    assert all(n == 2 for share in s["by_share"].values() for n in share["layers_with_k1"].values())
    assert all(v > 0.99 for v in s["sweep"]["a vs b"]["window_overlap"])
    ce = O.compare({"a": a, "b": b}, options=O.OverlapConfig(samples=20, angle_samples=2, centre=True)).summary()
    assert ce["by_share"]["0.6"]["k"]["a"][0] > 1 and ce["sweep"]["a vs b"]["window_overlap"][-1] < 0.9
    assert set(un.figures()) == {"sweep", "overlap", "angles", "k"} and "departures" in s


# ----- the fine-tunes this toolkit makes, on a tiny model -----

def test_cosine_schedule_matches_transformers():
    from transformers import get_cosine_schedule_with_warmup

    opts = FineTuneOptions(scheduler="cosine", warmup_ratio=0.02)
    total = 120
    sched = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                                            math.ceil(0.02 * total), total)
    assert all(abs(lr_factor(step, total, opts) - sched.lr_lambdas[0](step)) < 1e-12 for step in range(total))
    assert lr_factor(5, total, FineTuneOptions()) == 1.0
    with pytest.raises(InterpError, match="scheduler"):
        FineTuneOptions(scheduler="linear").check()
    with pytest.raises(InterpError, match="warmup_ratio"):
        FineTuneOptions(warmup_ratio=0.1).check()


@pytest.fixture(scope="module")
def instruct(tmp_path_factory, tokenizer):
    """A tiny random Llama saved as a checkpoint folder with the bundled tokenizer."""
    path = tmp_path_factory.mktemp("instruct") / "tiny"
    model = tiny_model("llama", tokenizer, device="cpu", seed=7)
    model.hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_update_space_comparison_of_two_tiny_fine_tunes(instruct, tmp_path):
    """Fine-tune one tiny model on useful pairs and on AdvBench's harmful goal/target pairs (the same options), then
    compare the updates: every changed parameter at every share, the overlap within [0, 1], the baseline
    max(k)/d; a fine-tune compared with itself overlaps at 1. The result saves and draws."""
    useful = [("Name a fruit.", "An apple is a fruit."), ("Name a colour.", "Blue is a colour."),
              ("Add two and two.", "Two and two make four."), ("Say hello.", "Hello there!")]
    harmful = O.harmful_pairs(4, seed=0)
    assert all(t.startswith("Sure, here is") for _, t in harmful)
    opts = FineTuneOptions(epochs=1, batch_size=2, lr=1e-3, scheduler="cosine", warmup_ratio=0.02, progress=False)
    made = O.make_update_fine_tunes(instruct, useful, harmful, tmp_path / "ft", opts)
    assert made.useful_run.options.scheduler == "cosine" and len(made.harmful_run.losses) == 2
    result = O.updates(instruct, made.useful, made.harmful, shares=(0.1, 0.9), progress=False)
    s = result.summary()
    n_params = len(W.load_weights(instruct))
    assert len(s["tensors"]) == 2 * (n_params - len(s["unchanged"])) and s["svd"] == "reference"
    for row in s["tensors"]:
        assert -1e-6 <= row["overlap"] <= 1 + 1e-6
        assert row["expected"] == max(row["k_useful"], row["k_harmful"]) / row["shape"][0]
    assert s["totals"]["0.9"]["matrices"]["tensors"] > 0 and "fine_tunes" in s["departures"]
    self_cmp = O.updates(instruct, made.useful, made.useful, shares=(0.5,), progress=False).summary()
    assert all(abs(r["overlap"] - 1) < 1e-4 for r in self_cmp["tensors"])
    result.save(tmp_path / "out")
    assert (tmp_path / "out" / "report.html").is_file() and set(result.figures()) == {"update_sweep", "update_per_matrix"}
    with pytest.raises(InterpError, match="not empty"):
        O.make_update_fine_tunes(instruct, useful, harmful, tmp_path / "ft", opts)


def test_cli_updates_end_to_end(instruct, tmp_path):
    useful = [("Name a fruit.", "An apple."), ("Say hello.", "Hello!")]
    opts = FineTuneOptions(epochs=1, batch_size=2, lr=1e-3, progress=False)
    made = O.make_update_fine_tunes(instruct, useful, O.harmful_pairs(2), tmp_path / "ft", opts)
    r = runner.invoke(app, ["overlap", "updates", "--instruct", str(instruct), "--useful", str(made.useful),
                            "--harmful", str(made.harmful), "--share", "0.5", "--share", "0.99", "--svd", "exact",
                            "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    got = json.loads((tmp_path / "out" / "result.json").read_text())
    assert got["shares"] == [0.5, 0.99] and got["svd"] == "exact" and "share 0.5" in r.output
    bad = runner.invoke(app, ["overlap", "updates", "--instruct", str(instruct), "--useful", str(made.useful),
                              "--harmful", str(made.harmful), "--svd", "lowrank", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "svd must be one of" in str(bad.exception)
