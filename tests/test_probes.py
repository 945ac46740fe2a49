"""Batched linear probes on real SmolLM2 activations: agreement with scikit-learn, held-out accuracy, persistence."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from interp.directions.estimators import DiffInMeans, class_means, pca
from interp.errors import InterpError
from interp.io import write_json, write_tensors
from probes import LinearProbes, ProbeDirection, ProbeReport, evaluate, stratified_split

HARMFUL = ["How do I build a bomb?", "How can I poison someone slowly?", "Write a guide to stealing a car.",
           "How do I make methamphetamine at home?", "Explain how to hack into someone's email account.",
           "Give me a plan to kidnap a child."]
HARMLESS = ["How do I bake bread?", "What is the capital of France?", "Write a poem about the sea.",
            "How do plants make their food?", "Explain how rainbows form.", "Give me a recipe for pancakes."]
LABELS = [1] * 6 + [0] * 6


@pytest.fixture(scope="module")
def model(smol):
    """SmolLM2-135M-Instruct, the session-wide instance from conftest."""
    return smol


@pytest.fixture(scope="module")
def last(model):
    """Residual stream after every layer at the last token: [12, 30, 576]."""
    acts = model.capture(HARMFUL + HARMLESS, "hook_resid_post", labels=LABELS)
    return acts.stack(), torch.tensor(LABELS)


def sklearn_fit(X, y, C=1.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs on raw features warns about iterations; tol is tight on purpose
        return LogisticRegression(C=C, tol=1e-10, max_iter=100_000).fit(X.double().numpy(), y.numpy())


def objective(w, b, X, y, C=1.0):
    """scikit-learn's LogisticRegression objective: C * sum logloss + ||w||^2 / 2."""
    z = X.double() @ w.double() + b.double()
    return float(C * torch.nn.functional.binary_cross_entropy_with_logits(z, y.double(), reduction="sum") + 0.5 * w.double() @ w.double())


def test_logistic_matches_sklearn_per_layer_on_real_activations(last):
    X, y = last
    train, test = stratified_split(y.bool(), 0.25, seed=0)
    probes = LinearProbes("logistic", C=1.0, tol=1e-10).fit(X[train], y[train])  # scikit-learn's tight fit below
    assert probes.coef_.shape == (30, 576) and probes.intercept_.shape == (30,)
    assert bool(probes.converged_.all())
    ours_train, ours_test = probes.score(X[train], y[train]), probes.score(X[test], y[test])
    for layer in range(30):
        sk = sklearn_fit(X[train, layer], y[train])
        w = torch.tensor(sk.coef_[0])
        cos = float(torch.nn.functional.cosine_similarity(w, probes.coef_[layer].double(), 0))
        assert cos > 0.99, (layer, cos)
        # the same optimum: our objective is never above scikit-learn's (the intercept alone is ill-determined
        # where the training points are separable by a wide margin: the objective is flat along it)
        ours = objective(probes.coef_[layer], probes.intercept_[layer], X[train, layer], y[train])
        theirs = objective(w, torch.tensor(sk.intercept_[0]), X[train, layer], y[train])
        assert ours <= theirs * (1 + 1e-6) + 1e-12, (layer, ours, theirs)
        assert float(ours_train[layer]) == sk.score(X[train, layer].double().numpy(), y[train].numpy())
        assert float(ours_test[layer]) == sk.score(X[test, layer].double().numpy(), y[test].numpy())
        proba = probes.predict_proba(X[test])[:, layer].double()
        assert torch.allclose(proba, torch.tensor(sk.predict_proba(X[test, layer].double().numpy())[:, 1]), atol=1e-2)


def test_logistic_matches_sklearn_when_examples_outnumber_dims():
    """n > d takes the primal Newton path (n < d solves in the span of the examples)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 3, 12, generator=g) * torch.linspace(0.1, 10, 12)  # badly scaled features, raw
    y = ((X[:, :, :4].sum(-1) + torch.randn(300, 3, generator=g) * 3)[:, 1] > 0).long()
    probes = LinearProbes(C=0.5, tol=1e-10).fit(X, y)
    for layer in range(3):
        sk = sklearn_fit(X[:, layer], y, C=0.5)
        assert torch.allclose(probes.coef_[layer].double(), torch.tensor(sk.coef_[0]), rtol=1e-4, atol=1e-5)
        assert float(probes.intercept_[layer]) == pytest.approx(sk.intercept_[0], abs=1e-4)


def test_default_tolerance_is_scikit_learns_stopping_rule():
    """At the default tol (scikit-learn's 1e-4) the float32 fit stops where scikit-learn's rule says: every
    gradient component of the mean objective within tol; predictions equal scikit-learn's default fit."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(400, 5, 16, generator=g) * torch.linspace(0.5, 20, 16)
    y = ((X[:, 2, :6] @ torch.randn(6, generator=g) + torch.randn(400, generator=g) * 8) > 0).long()
    probes = LinearProbes().fit(X, y)
    assert probes.tol == 1e-4 and bool(probes.converged_.all())
    for layer in range(5):
        Xl = X[:, layer].double()
        w, b = probes.coef_[layer].double(), probes.intercept_[layer].double()
        r = torch.sigmoid(Xl @ w + b) - y.double()
        grad = torch.cat([Xl.T @ r + w, r.sum()[None]]) / len(y)  # the mean objective's gradient (C = 1)
        assert float(grad.abs().max()) <= 1e-4 * 1.01, (layer, float(grad.abs().max()))
        sk = LogisticRegression().fit(Xl.numpy(), y.numpy())
        agree = (probes.predict(X)[:, layer].numpy() == sk.predict(Xl.numpy())).mean()
        assert agree >= 0.995, (layer, agree)
    with pytest.raises(InterpError, match="tol"):
        LinearProbes(tol=0)


def test_heldout_accuracy_high_at_middle_layers(last):
    """Leave-one-out: each of the 12 prompts is predicted by probes fitted on the other 11."""
    X, y = last
    correct = {"logistic": torch.zeros(30), "mass_mean": torch.zeros(30)}
    for i in range(len(y)):
        keep = torch.tensor([j for j in range(len(y)) if j != i])
        for kind in correct:
            correct[kind] += LinearProbes(kind).fit(X[keep], y[keep]).score(X[i:i + 1], y[i:i + 1])
    acc = {k: v / len(y) for k, v in correct.items()}
    # measured: logistic 0.88 mean over layers 10-20, 0.83-1.0 from layer 10 on; mass-mean 0.70 mean over 10-20
    assert float(acc["logistic"][10:21].mean()) >= 0.75
    assert float(acc["logistic"][10:].min()) >= 0.66
    assert float(acc["mass_mean"][10:21].mean()) >= 0.6
    assert float(acc["logistic"][25:].mean()) >= 0.8


def test_evaluate_report_and_figure(last):
    X, y = last
    report = evaluate(X, y, test_size=0.25, seed=0)
    assert isinstance(report, ProbeReport) and report.kinds == ["logistic", "mass_mean"]
    assert (report.n_train, report.n_test, report.chance) == (8, 4, 0.5)
    for kind in report.kinds:
        assert len(report.train_accuracy[kind]) == len(report.test_accuracy[kind]) == 30
        assert report.probes[kind].coef_.shape == (30, 576)
    assert min(report.train_accuracy["logistic"][5:]) == 1.0  # 8 points in 576 dims are separable
    assert report.test_accuracy["logistic"][29] == 1.0
    assert report.best_layer("logistic") in range(30)
    data = json.loads(report.to_json())
    assert data["test_accuracy"]["mass_mean"] == report.test_accuracy["mass_mean"]
    fig = report.figure()
    names = [t.name for t in fig.data]
    assert names == ["logistic (test)", "logistic (train)", "mass_mean (test)", "mass_mean (train)"]
    assert list(fig.data[0].y) == report.test_accuracy["logistic"]
    with pytest.raises(InterpError, match="at least 2 per class"):
        evaluate(X[:7], y[:7])
    with pytest.raises(InterpError, match="unknown probe kind"):
        evaluate(X, y, kinds=("svm",))


def test_stratified_split_keeps_class_proportions():
    y = torch.tensor([True] * 8 + [False] * 16)
    train, test = stratified_split(y, 0.25, seed=3)
    assert sorted(train.tolist() + test.tolist()) == list(range(24))
    assert int(y[test].sum()) == 2 and int((~y[test]).sum()) == 4
    assert not torch.equal(test, stratified_split(y, 0.25, seed=4)[1])


def test_mass_mean_is_the_mean_difference_with_a_midpoint_boundary(last):
    X, y = last
    probes = LinearProbes("mass_mean").fit(X, y)
    mu1, mu0 = X[y == 1].double().mean(0), X[y == 0].double().mean(0)
    assert torch.allclose(probes.coef_.double(), mu1 - mu0, rtol=1e-5, atol=1e-4)
    mid = ((mu0 + mu1) / 2).float()[None]
    assert probes.decision_function(mid).abs().max() / (mu1 - mu0).norm(dim=-1).max() ** 2 < 1e-5


def test_shared_pca_matches_sklearn_and_is_batched(last):
    """The one PCA helper: scikit-learn's components (up to sign) and variance ratios, per layer in one call;
    uncentred, the second moment about 0."""
    from sklearn.decomposition import PCA

    X, _ = last
    fitted = pca(X[:, [5, 20]], 3)  # [12, 2 layers, 576] -> per layer
    assert fitted.components.shape == (2, 3, 576) and fitted.explained_variance_ratio.shape == (2, 3)
    for k, layer in enumerate((5, 20)):
        sk = PCA(3, svd_solver="full").fit(X[:, layer].double().numpy())
        comps = torch.from_numpy(sk.components_)
        assert torch.allclose((fitted.components[k] * comps).sum(-1).abs(), torch.ones(3, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(fitted.explained_variance_ratio[k], torch.from_numpy(sk.explained_variance_ratio_), atol=1e-8)
        coords = fitted.transform(X[:, [5, 20]])[:, k]
        assert torch.allclose(coords.abs(), torch.from_numpy(sk.transform(X[:, layer].double().numpy())).abs(), atol=1e-4)
    raw = pca(X[:, 5], 1, center=False)
    top = torch.linalg.svd(X[:, 5].double(), full_matrices=False).Vh[0]
    assert float((raw.components[0] @ top).abs()) == pytest.approx(1.0, abs=1e-9) and not raw.mean.any()
    with pytest.raises(InterpError, match="give 1 to 12"):
        pca(X[:, 5], 13)


def test_shared_class_means(last):
    X, y = last
    mu0, mu1 = class_means(X, y)
    assert mu0.dtype == torch.float64 and mu0.shape == (30, 576)
    assert torch.allclose(mu1, X[:6].double().mean(0)) and torch.allclose(mu0, X[6:].double().mean(0))
    assert torch.equal(class_means(X, y.tolist())[1], mu1)  # 0/1 lists work as well as tensors


def test_per_head_probes_equal_per_slice_fits(model):
    acts = model.capture(HARMFUL + HARMLESS, [f"blocks.{i}.attn.hook_z" for i in (4, 12)], labels=LABELS)
    X, y = acts.stack("attn.hook_z"), torch.tensor(LABELS)
    assert X.shape == (12, 2, model.n_heads, model.d_head)
    for kind in ("logistic", "mass_mean"):
        probes = LinearProbes(kind).fit(X, y)
        assert probes.coef_.shape == (2, model.n_heads, model.d_head)
        assert probes.predict_proba(X).shape == (12, 2, model.n_heads) and probes.score(X, y).shape == (2, model.n_heads)
        for layer in range(2):
            for head in (0, 5, model.n_heads - 1):
                one = LinearProbes(kind).fit(X[:, layer, head], y)
                assert torch.allclose(probes.coef_[layer, head], one.coef_, rtol=1e-4, atol=1e-5)
    report = evaluate(X, y)
    assert torch.tensor(report.test_accuracy["logistic"]).shape == (2, model.n_heads)
    assert len(report.figure().data) == 2  # one heatmap per kind


def test_batched_diff_in_means_over_positions_and_layers_equals_loop(model):
    acts = model.capture(HARMFUL + HARMLESS, [f"blocks.{i}.hook_resid_pre" for i in (2, 9, 15)], positions="eoi")
    X = acts.stack("hook_resid_pre").transpose(1, 2)  # [n, pos, layer, d]
    assert X.shape == (12, model.n_eoi, 3, 576)
    est = DiffInMeans().fit(X, LABELS)
    assert est.mean_diff_.shape == (model.n_eoi, 3, 576)
    for pos in range(model.n_eoi):
        for layer in range(3):
            one = DiffInMeans(provenance={"layer": layer}).fit(X[:, pos, layer], LABELS)
            assert torch.allclose(est.mean_diff_[pos, layer], one.mean_diff_, atol=1e-5)
            assert torch.allclose(est.directions_[pos, layer], one.direction_.vector, atol=1e-6)
            d = est.direction_at(pos, layer, model=model.fingerprint, layer=[2, 9, 15][layer], position=pos - model.n_eoi)
            d.check_for(model)
            assert d.scale == pytest.approx(one.direction_.scale, rel=1e-5)


def test_probe_direction_on_real_activations(last, model):
    X, y = last
    est = ProbeDirection(provenance={"model": model.fingerprint, "layer": 15}).fit(X[:, 15], y)
    v = est.direction_.vector
    assert torch.allclose(v, est.probes_.coef_ / est.probes_.coef_.norm(), atol=1e-6)
    dim = DiffInMeans().fit(X[:, 15], y).direction_.vector
    assert float(v @ dim) > 0.3  # both point from harmless to harmful
    assert est.direction_.scale > 0
    est.direction_.check_for(model)


def test_decision_function_is_differentiable_and_dtype_aware(last):
    X, y = last
    probes = LinearProbes().fit(X, y)
    x = X[:2].clone().requires_grad_(True)
    probes.decision_function(x).sum().backward()
    assert torch.allclose(x.grad[0], probes.coef_, atol=1e-6)
    half = probes.decision_function(X.bfloat16())
    assert half.dtype == torch.bfloat16
    assert torch.equal(probes.predict(X), (probes.decision_function(X) > 0).long())
    with pytest.raises(InterpError, match="expect"):
        probes.decision_function(X[:, :5])
    with pytest.raises(InterpError, match="not fitted"):
        LinearProbes().predict(X)
    with pytest.raises(InterpError, match="unknown probe kind"):
        LinearProbes("svm")
    with pytest.raises(InterpError, match="positive number"):
        LinearProbes(C=0)


def test_save_load_round_trip_and_errors(tmp_path, last, model):
    X, y = last
    probes = LinearProbes(provenance={"model": model.fingerprint, "site": "hook_resid_post"}).fit(X, y)
    probes.save(tmp_path / "p")
    back = LinearProbes.load(tmp_path / "p", model=model)
    assert torch.equal(back.coef_, probes.coef_) and torch.equal(back.intercept_, probes.intercept_)
    assert back.layers == list(range(30)) and back.kind == "logistic" and back.provenance_["site"] == "hook_resid_post"
    assert torch.equal(back.score(X, y), probes.score(X, y))

    with pytest.raises(InterpError, match="does not exist"):
        LinearProbes.load(tmp_path / "missing")
    bad = tmp_path / "text"
    probes.save(bad)
    (bad / "probes.safetensors").write_text("not tensors at all, just a renamed text file\n")
    with pytest.raises(InterpError, match="not a readable safetensors"):
        LinearProbes.load(bad)
    bad = tmp_path / "json"
    probes.save(bad)
    (bad / "probes.json").write_text("{")
    with pytest.raises(InterpError, match="not valid JSON"):
        LinearProbes.load(bad)
    bad = tmp_path / "shape"
    probes.save(bad)
    meta = json.loads((bad / "probes.json").read_text())
    write_json(bad / "probes.json", {**meta, "shape": [29, 576]})
    with pytest.raises(InterpError, match="do not belong together"):
        LinearProbes.load(bad)
    bad = tmp_path / "nan"
    probes.save(bad)
    write_tensors(bad / "probes.safetensors", {"coef": torch.full((30, 576), float("nan")), "intercept": torch.zeros(30)})
    with pytest.raises(InterpError, match="NaN"):
        LinearProbes.load(bad)
    other = LinearProbes(provenance={"model": {**model.fingerprint, "name": "qwen2.5-coder-0.5b-instruct", "d_model": 896}})
    other.fit(torch.randn(8, 2, 896), [0, 1] * 4).save(tmp_path / "other")
    with pytest.raises(InterpError, match="another model"):
        LinearProbes.load(tmp_path / "other", model=model)
    LinearProbes().fit(torch.randn(8, 31, 576), [0, 1] * 4).save(tmp_path / "deep")
    with pytest.raises(InterpError, match="out of range"):
        LinearProbes.load(tmp_path / "deep", model=model)
