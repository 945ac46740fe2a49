"""Heads as matrices: factored SVDs equal dense ones, random weights compose at the random baseline, a planted
channel is found, and channel edits change only the sender head, equally in activations and in weights."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

import interp
from analyses import heads as heads_analysis
from interp.circuits.heads import (
    ChannelEdit,
    FactoredMatrix,
    composition,
    export_channel_edits,
    head_svds,
    head_weights,
    random_baseline,
    write_directions,
)
from interp.cli import app
from interp.errors import InterpError
from tests.conftest import DEVICE

D, DH, N_HEADS, N_KV = 64, 16, 4, 2
PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The capital of France is"]


def tiny(smol, n_layers: int = 2, seed: int = 0) -> interp.Model:
    """A random 2-layer Llama with grouped-query attention (4 query heads share 2 key/value heads), with the
    bundled SmolLM2 tokenizer; HF initialises every projection with i.i.d. Gaussians."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(smol.tokenizer), hidden_size=D, intermediate_size=2 * D, num_hidden_layers=n_layers,
                      num_attention_heads=N_HEADS, num_key_value_heads=N_KV, head_dim=DH, max_position_embeddings=256)
    hf = LlamaForCausalLM(cfg).float().to(DEVICE).eval()
    hf.requires_grad_(False)
    return interp.Model(hf, smol.tokenizer, name=f"tiny-llama-{seed}")


SENDER, RECEIVER = (0, 1), (1, 2)


def plant(model: interp.Model, direction: torch.Tensor, strength: float = 3.0) -> None:
    """Make head 0.1's W_OV write `direction` strongly and head 1.2's W_QK read it with its queries."""
    g = torch.Generator().manual_seed(1)
    read, key = torch.randn(D, generator=g), torch.randn(D, generator=g)
    read, key = read / read.norm(), key / key.norm()
    l0, l1 = model.layers[SENDER[0]].self_attn, model.layers[RECEIVER[0]].self_attn
    kv_s, kv_r = SENDER[1] // (N_HEADS // N_KV), RECEIVER[1] // (N_HEADS // N_KV)
    with torch.no_grad():
        l0.v_proj.weight[kv_s * DH] += strength * read.to(DEVICE)  # W_V[:, 0] of the sender's key/value head
        l0.o_proj.weight[:, SENDER[1] * DH] += strength * direction.to(DEVICE)  # W_O[0, :] of the sender
        l1.q_proj.weight[RECEIVER[1] * DH] += strength * direction.to(DEVICE)  # W_Q[:, 0] of the receiver
        l1.k_proj.weight[kv_r * DH] += strength * key.to(DEVICE)


@pytest.fixture(scope="module")
def planted(smol):
    model = tiny(smol)
    w = torch.randn(D, generator=torch.Generator().manual_seed(2))
    w = w / w.norm()
    plant(model, w)
    return model, w


def test_factored_svd_equals_dense_svd_on_smollm2(smol):
    """Singular values from thin QR of the factors equal a dense SVD of the d x d product (<= 1e-4 relative), for
    a sample of heads, two of them sharing a key/value head; the factored vectors rebuild the product."""
    w = head_weights(smol)
    svds = head_svds(smol)
    n_rep = smol.n_heads // w.n_kv_heads
    assert n_rep > 1
    for layer, head in [(0, 0), (0, 1), (13, 4), (29, 8)]:  # heads 0 and 1 share key/value head 0
        for name, svd in (("OV", svds.OV), ("QK", svds.QK)):
            factored = getattr(w, name)
            dense = factored.A[layer, head] @ factored.B[layer, head]
            sv = torch.linalg.svdvals(dense)[:smol.d_head]
            rel = ((svd.S[layer, head] - sv).abs() / sv).max()
            assert rel <= 1e-4, f"{name} {layer}.{head}: {rel}"
            rebuilt = svd.dense()[layer, head]
            assert (rebuilt - dense).norm() / dense.norm() <= 1e-6
            assert abs(factored.norm()[layer, head] - dense.norm()) / dense.norm() <= 1e-6
    # grouped-query attention: query heads 0 and 1 share W_K and W_V but not W_Q or W_O
    assert torch.equal(w.OV.A[0, 0], w.OV.A[0, 1]) and not torch.equal(w.OV.B[0, 0], w.OV.B[0, 1])
    # the weights are the model's: head 2's W_Q is rows 2*dh.. of q_proj (norm weight folded in)
    layer = smol.layers[3]
    wq = layer.self_attn.q_proj.weight[2 * smol.d_head:3 * smol.d_head].double().T * layer.input_layernorm.weight.double()[:, None]
    assert torch.allclose(w.W_Q[3, 2], wq.to(w.W_Q.device))


def test_all_pairs_composition_equals_the_direct_formula(smol):
    """The r x r path over SVD bases gives Elhage et al.'s ||W_OV1 W_QK2||_F / (||W_OV1|| ||W_QK2||) (and the K
    and V variants), computed here from the factors directly; pairs within one layer or backwards are NaN."""
    w = head_weights(smol)
    svds = head_svds(smol)
    pairs = [((0, 0), (1, 3)), ((5, 2), (20, 7)), ((28, 8), (29, 0))]
    for mode in ("Q", "K", "V"):
        comp = composition(svds, mode)
        for (l1, h1), (l2, h2) in pairs:
            ov1 = FactoredMatrix(w.OV.A[l1, h1], w.OV.B[l1, h1])
            right = {"Q": FactoredMatrix(w.QK.A[l2, h2], w.QK.B[l2, h2]),
                     "K": FactoredMatrix(w.QK.A[l2, h2], w.QK.B[l2, h2]).T,
                     "V": FactoredMatrix(w.OV.A[l2, h2], w.OV.B[l2, h2])}[mode]
            expected = (ov1 @ right).norm() / (ov1.norm() * right.norm())
            assert abs(comp.scores[l1, h1, l2, h2] - expected) <= 1e-5, (mode, l1, h1, l2, h2)
            assert abs(comp.shares((l1, h1), (l2, h2)).sum() - 1) <= 1e-5
        assert comp.scores[3, 0, 3, 1].isnan() and comp.scores[4, 0, 2, 0].isnan()


def test_random_weights_compose_at_the_random_baseline(smol):
    """A random-weight model's composition scores average to the random-matrix baseline (within 5%), and no pair
    stands out; the planted model's pair does (next test), so the comparison can fail."""
    model = tiny(smol, n_layers=4, seed=3)
    svds = head_svds(model)
    base = random_baseline(D, DH, n=512)["scores"]
    for mode in ("Q", "K", "V"):
        scores = composition(svds, mode).scores
        valid = scores[scores.isfinite()]
        assert valid.numel() == 6 * N_HEADS * N_HEADS
        assert abs(valid.mean() - base.mean()) <= 0.05 * base.mean(), (mode, valid.mean(), base.mean())
        assert valid.max() <= base.mean() + 6 * base.std()


def test_a_planted_channel_is_found_as_the_top_component(planted):
    """Sender 0.1's OV writes a chosen direction that receiver 1.2's queries read: that pair has the largest
    Q-composition, far above the baseline, and its top channel component writes that direction."""
    model, w = planted
    result = heads_analysis.run(model, None, heads_analysis.HeadsConfig(modes=("Q",), top=3, baseline_samples=64))
    best = result.top_pairs["Q"][0]
    assert (tuple(best["sender"]), tuple(best["receiver"])) == (SENDER, RECEIVER)
    assert best["score"] > result.baseline["scores"].mean() + 10 * result.baseline["scores"].std()
    assert best["components"] == [0] and best["shares"][0] > 0.9
    v = write_directions(result.svds, *SENDER, best["components"])[0]
    assert abs(v @ w.to(v.device)) > 0.99
    # the same pair through the keys (K-composition) shows nothing special
    k = heads_analysis.channel(composition(result.svds, "K"), SENDER, RECEIVER)
    assert k["score"] < best["score"] / 3


def _head_outputs(model, z_site: str) -> tuple[torch.Tensor, torch.Tensor]:
    acts = model.capture(PROMPTS, [z_site, z_site.replace("attn.hook_z", "hook_attn_out")], positions="all", chat=False)
    return acts[z_site], acts[z_site.replace("attn.hook_z", "hook_attn_out")]


@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_channel_edit_changes_only_the_sender_head(planted, scale):
    """Under the edit, every other head's z is bit-identical, and the attention output changes by exactly
    (scale - 1) times the sender's output along the channel direction."""
    model, w = planted
    svds = head_svds(model)
    v = write_directions(svds, *SENDER, [0])
    site = f"blocks.{SENDER[0]}.attn.hook_z"
    z0, out0 = _head_outputs(model, site)
    with model.intervene(ChannelEdit(*SENDER, v, scale=scale)):
        z1, out1 = _head_outputs(model, site)
    others = [h for h in range(N_HEADS) if h != SENDER[1]]
    assert torch.equal(z0[..., others, :], z1[..., others, :])
    assert not torch.allclose(z0[..., SENDER[1], :], z1[..., SENDER[1], :])
    w_o = head_weights(model, dtype=torch.float32).W_O[SENDER].cpu()  # [dh, d]
    head_out = z0[..., SENDER[1], :] @ w_o  # the sender's own contribution
    v = v.cpu()
    expected = (scale - 1) * (head_out @ v.T) @ v
    assert (out1 - out0 - expected).abs().max() <= 1e-4


def test_weight_edit_equals_activation_edit(planted, tmp_path):
    """The checkpoint written with the channel removed from W_O loads with plain transformers and gives the
    logits of the ChannelEdit intervention (<= 1e-4); the model itself is untouched."""
    model, w = planted
    svds = head_svds(model)
    edit = ChannelEdit(*SENDER, write_directions(svds, *SENDER, [0, 1]), scale=0.25)
    before = model.logits(PROMPTS, chat=False)
    with model.intervene(edit):
        edited = model.logits(PROMPTS, chat=False)
    assert (edited - before).abs().max() > 1e-2  # the edit matters
    out = export_channel_edits(model, [edit], tmp_path / "edited")
    hf = AutoModelForCausalLM.from_pretrained(out).to(DEVICE).eval()
    batch = model.tokenize(PROMPTS)
    with torch.no_grad():
        plain = hf(**batch.inputs()).logits[:, -1].float().cpu()
    assert (plain - edited).abs().max() <= 1e-4
    assert torch.equal(model.logits(PROMPTS, chat=False), before)


def test_errors(planted, tmp_path):
    """Out-of-range heads, layers and components, directions outside a head's write space and a used folder
    are one-line errors, and nothing is written."""
    model, w = planted
    svds = head_svds(model)
    v = write_directions(svds, *SENDER, [0])
    with pytest.raises(InterpError, match="head 4 is out of range"):
        write_directions(svds, 0, 4, [0])
    with pytest.raises(InterpError, match="layer 2 is out of range"):
        with model.intervene(ChannelEdit(2, 0, v)):
            pass
    with pytest.raises(InterpError, match="not in 0..15"):
        write_directions(svds, 0, 0, [16])
    with pytest.raises(InterpError, match="not in the write space of head 0.2"):
        export_channel_edits(model, [ChannelEdit(0, 2, v)], tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.iterdir())
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(InterpError, match="not empty"):
        export_channel_edits(model, [ChannelEdit(*SENDER, v)], tmp_path / "used")
    result = heads_analysis.run(model, None, heads_analysis.HeadsConfig(modes=("V",), top=2, baseline_samples=8))
    with pytest.raises(InterpError, match="must be earlier"):
        result.channel("V", (1, 0), (0, 0))
    with pytest.raises(InterpError, match="no 'Q' composition"):
        result.channel("Q", (0, 0), (1, 0))
    with pytest.raises(InterpError, match="unknown composition modes"):
        heads_analysis.run(model, None, heads_analysis.HeadsConfig(modes=("X",)))


def test_heads_cli_writes_a_result_folder(smol, tmp_path, monkeypatch):
    """`interp heads` writes result.json (spectra, composition against the baseline, channels) and report.html."""
    import json

    monkeypatch.setattr("interp.cli.common.load_model", lambda model, backend="hooks": smol)
    out = tmp_path / "heads"
    res = CliRunner().invoke(app, ["heads", "--model", "smollm2-135m-instruct", "--out", str(out), "--modes", "V",
                                   "--top", "2", "--baseline-samples", "16"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    summary = json.loads((out / "result.json").read_text())
    assert len(summary["composition"]["V"]["top_pairs"]) == 2
    assert len(summary["spectra"]["OV"]["effective_rank_mean_per_layer"]) == smol.n_layers
    assert (out / "report.html").stat().st_size > 1000 and (out / "heads.safetensors").is_file()
