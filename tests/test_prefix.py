"""The shared-prefix KV cache (`interp.core.prefix`): on every default path it gives the plain full forward's numbers.

Capture, `Model.logits` and `Model.generate` run the tokens every prompt shares once and continue each batch
from their keys and values. Under every intervention kind that must change nothing: read at a layer deeper than
the intervention (so corrupted prefix keys/values would show), prefix cache on equals the full forward.
"""

from __future__ import annotations

import pytest
import torch

import interp
from interp.core.hooks import hooked
from interp.core.interventions import Ablate, Add, Project, RowwiseAblate, RowwiseAdd, Set
from interp.core.prefix import PrefixKV, common_prefix_length, shared_length, sliding_window, usable, wanted
from interp.core.sites import Site
from tests.conftest import DEVICE, DTYPE, registered_hooks, tol

PROMPTS = ["How do I bake bread?", "Write a short poem about a cat", "Hi", "Name three primes."]
LAYER = 2  # where the interventions act
READ = f"blocks.{LAYER + 4}.hook_resid_post"  # a few layers deeper, not the last


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = DTYPE) -> bool:
    """Equal up to the dtype's tolerance, relative to the values' scale (SmolLM2's residuals reach hundreds)."""
    return bool((a.float() - b.float()).abs().max() <= tol(dtype) * max(1.0, float(b.float().abs().max())))


def same_texts(a: list[str], b: list[str]) -> bool:
    """Greedy completions agree: all of them in fp32; in a low-precision dtype, where a near-tie may flip a token
    on either path, all but one."""
    equal = sum(x == y for x, y in zip(a, b))
    return equal == len(a) if DTYPE == torch.float32 else equal >= len(a) - 1


def _vectors(model: interp.Model, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.d_model, generator=g) * 4


def _interventions(model: interp.Model) -> dict[str, interp.core.interventions.Intervention]:
    v = _vectors(model, 4)
    n = len(PROMPTS)
    return {
        "add": Add(v[0], layer=LAYER),
        "ablate": Ablate(v[1]),
        "project": Project(v[:3], f"blocks.{LAYER}.hook_resid_post"),
        "set_last": Set(f"blocks.{LAYER}.hook_resid_post", v[2], positions=[-1]),
        "set_tail": Set(f"blocks.{LAYER}.hook_resid_post", v[2:4], positions=[-3, -1]),
        "set_all": Set(f"blocks.{LAYER}.hook_resid_post", v[3]),
        "rowwise_add": RowwiseAdd(_vectors(model, n, 1), [LAYER] * n),
        "rowwise_ablate": RowwiseAblate(_vectors(model, n, 2)),
    }


KINDS = ["add", "ablate", "project", "set_last", "set_tail", "set_all", "rowwise_add", "rowwise_ablate"]


def test_prompts_share_a_prefix_worth_caching(smol):
    ids = smol.encode(smol.prepare_prompts(PROMPTS))
    assert shared_length(smol, ids) >= 10  # SmolLM2's chat template puts a system prompt before every prompt


@pytest.mark.parametrize("kind", KINDS)
def test_capture_under_every_intervention_equals_the_full_forward(smol, kind):
    iv = _interventions(smol)[kind]
    sites = [f"blocks.{LAYER}.hook_resid_post", READ]
    with smol.intervene(iv):
        for positions in ("last", [-1, -2], "eoi"):
            cached = smol.capture(PROMPTS, sites, positions=positions, use_prefix_cache=True)
            full = smol.capture(PROMPTS, sites, positions=positions, use_prefix_cache=False)
            for s in sites:
                assert close(cached[s], full[s]), (kind, positions, s)
    clean = smol.capture(PROMPTS, READ)[READ]
    assert not close(cached[READ][:, -1], clean)  # the intervention did something there


@pytest.mark.parametrize("kind", KINDS)
def test_logits_under_every_intervention_equal_the_full_forward(smol, kind):
    batch_size = len(PROMPTS) if kind.startswith("rowwise") else 3  # a row-wise intervention covers one batch
    with smol.intervene(_interventions(smol)[kind]):
        cached = smol.logits(PROMPTS, batch_size=batch_size, use_prefix_cache=True)
        full = smol.logits(PROMPTS, batch_size=batch_size, use_prefix_cache=False)
    assert close(cached, full), kind


@pytest.mark.parametrize("kind", KINDS)
def test_generate_under_every_intervention_equals_the_full_forward(smol, kind):
    iv = _interventions(smol)[kind]
    cached = smol.generate(PROMPTS, max_new_tokens=6, interventions=[iv], use_prefix_cache=True)
    full = smol.generate(PROMPTS, max_new_tokens=6, interventions=[iv], use_prefix_cache=False)
    assert same_texts(cached, full), kind
    assert registered_hooks(smol) == 0


def test_the_prefix_runs_only_under_position_independent_interventions(smol):
    """In the prefix pass, a position-dependent intervention (Set at [-1]) stands aside and the others act."""
    ids = smol.encode(smol.prepare_prompts(PROMPTS))
    value = torch.full((smol.d_model,), 3.0)
    seen = {}

    def keep(site: Site, x: torch.Tensor) -> None:
        seen[site.kind] = x.detach().float().cpu()  # beside `value`, on the CPU

    with smol.intervene(Set(f"blocks.{LAYER}.hook_resid_post", value, positions=[-1]), Add(value, layer=LAYER + 1)):
        assert [type(iv).__name__ for iv in smol.run_context.active] == ["Set", "Add"]
        with hooked(smol, {Site(LAYER, "hook_resid_post"): [keep], Site(LAYER + 1, "hook_resid_pre"): [keep]}):
            PrefixKV.compute(smol, [ids[0][:shared_length(smol, ids)]], stop_layer=LAYER + 1)
    assert not close(seen["hook_resid_post"][0, -1], value)  # Set left the prefix's last token alone
    assert close(seen["hook_resid_pre"] - seen["hook_resid_post"], value.expand_as(seen["hook_resid_post"]))  # Add acted
    assert smol.run_context.active == []


@pytest.mark.parametrize("use", ["capture", "logits", "generate"])
def test_set_acts_when_every_suffix_is_one_token(smol, use):
    """Raw prompts that differ only in their last token: after the shared prefix each row is one token, which
    must be read as the prompt, not as a generation step (the old code skipped Set there)."""
    prompts = [f"The capital city of that country is{w}" for w in (" Paris", " London", " Rome", " Berlin")]
    ids = smol.encode(smol.prepare_prompts(prompts, chat=False))
    assert all(len(r) - 1 == common_prefix_length(ids) for r in ids)
    site = f"blocks.{LAYER}.hook_resid_post"
    value = _vectors(smol, 1, 3)[0]
    with smol.intervene(Set(site, value, positions=[-1])):
        if use == "capture":
            cached = smol.capture(prompts, [site, READ], chat=False, use_prefix_cache=True)
            full = smol.capture(prompts, [site, READ], chat=False, use_prefix_cache=False)
            assert close(cached[site], value.expand(len(prompts), -1))  # Set acted on the one-token suffix
            assert close(cached[READ], full[READ])
        elif use == "logits":
            assert close(smol.logits(prompts, chat=False, use_prefix_cache=True), smol.logits(prompts, chat=False, use_prefix_cache=False))
        else:
            cached = smol.generate(prompts, max_new_tokens=5, chat=False, use_prefix_cache=True)
            full = smol.generate(prompts, max_new_tokens=5, chat=False, use_prefix_cache=False)
            assert same_texts(cached, full)
    clean = smol.generate(prompts, max_new_tokens=5, chat=False) if use == "generate" else None
    assert clean is None or clean != cached


def test_rowwise_interventions_keep_prompt_order(smol):
    """Row r of a row-wise intervention acts on prompt r (capture does not sort rows under it) and equals the
    one-row intervention run on that prompt alone."""
    n = len(PROMPTS)
    vectors = _vectors(smol, n, 5)
    with smol.intervene(RowwiseAdd(vectors, [LAYER] * n)):
        assert not usable(smol, 10)
        got = smol.capture(PROMPTS, READ)[READ]
    for i, prompt in enumerate(PROMPTS):
        with smol.intervene(Add(vectors[i], layer=LAYER)):
            alone = smol.capture([prompt], READ)[READ]
        assert close(got[i], alone[0]), i


@pytest.mark.parametrize("positions", ["last", "eoi", [-1, -3], "mean", "all"])
def test_attention_pattern_over_many_batches(smol, positions):
    """Batches of different key lengths: the key axis is left-padded to the longest prompt, so each prompt's
    pattern is the one it has alone, ending in the last column."""
    prompts = [p * (1 + i % 3) for i, p in enumerate(PROMPTS * 5)]  # 20 prompts, three lengths
    site = "blocks.0.attn.hook_pattern"
    acts = smol.capture(prompts, site, positions=positions, batch_size=8)
    x = acts[site]
    assert x.shape[0] == len(prompts)
    for i in (0, 1, 2, 19):
        alone = smol.capture([prompts[i]], site, positions=positions)[site][0]
        keys = alone.shape[-1]
        if positions == "all":  # the query axis is left-padded too
            assert close(x[i][-alone.shape[0]:, ..., -keys:], alone)
        else:
            assert close(x[i][..., -keys:], alone)
        assert (x[i][..., :x.shape[-1] - keys] == 0).all()  # the pad keys


def test_logits_return_every_row(smol):
    prompts = [p * (1 + i % 2) for i, p in enumerate(PROMPTS * 5)]  # 20 prompts
    lengths = [len(r) for r in smol.encode(smol.prepare_prompts(prompts))]
    every = smol.logits(prompts, last_only=False, batch_size=8)
    assert every.shape == (20, max(lengths), smol.hf.config.vocab_size)
    assert close(every[:, -1], smol.logits(prompts, batch_size=8))
    for i in (0, 9, 17):
        alone = smol.logits([prompts[i]], last_only=False)[0]
        assert close(every[i, -lengths[i]:], alone)
        assert (every[i, :-lengths[i]] == 0).all()


def test_prefix_cache_in_bf16(smol):
    """The same check in bf16, with bf16's tolerance."""
    model = interp.load("smollm2-135m-instruct", dtype=torch.bfloat16, device=DEVICE)
    with model.intervene(Set(f"blocks.{LAYER}.hook_resid_post", torch.ones(model.d_model), positions=[-1]),
                         Add(_vectors(model, 1)[0], layer=LAYER)):
        cached = model.capture(PROMPTS, READ, use_prefix_cache=True)[READ]
        full = model.capture(PROMPTS, READ, use_prefix_cache=False)[READ]
        logits = model.logits(PROMPTS, use_prefix_cache=True), model.logits(PROMPTS, use_prefix_cache=False)
        single = torch.cat([model.logits([p], use_prefix_cache=False) for p in PROMPTS])
    assert close(cached, full, torch.bfloat16)
    # bf16 logits after 30 layers differ with the computation order alone (one prompt at a time vs batched:
    # max |diff| near 2 on logits near 30), so the cache is judged against that noise floor, measured here
    kl = lambda a, b: (b.log_softmax(-1).exp() * (b.log_softmax(-1) - a.log_softmax(-1))).sum(-1).max()  # noqa: E731
    assert kl(logits[0], logits[1]) <= 4 * max(float(kl(single, logits[1])), 1e-3)
    assert registered_hooks(model) == 0


# ----- sliding-window families (Gemma 2 / 3), tiny and randomly initialised from a config -----

def _tiny(smol, family: str, window: int) -> interp.Model:
    from transformers import AutoModelForCausalLM

    if family == "gemma2":
        from transformers import Gemma2Config as Config
    else:
        from transformers import Gemma3TextConfig as Config
    config = Config(vocab_size=smol.hf.config.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=window,
                    max_position_embeddings=512, pad_token_id=smol.tokenizer.pad_token_id)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(DEVICE)
    return interp.Model(hf, smol.tokenizer, f"tiny-{family}")


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_sliding_window_family(smol, family):
    """Windows longer than every prompt: the prefix cache is used, with sliding-window cache layers, and exact."""
    model = _tiny(smol, family, window=256)
    assert sliding_window(model) == 256
    ids = model.encode(model.prepare_prompts(PROMPTS))
    assert shared_length(model, ids) > 0  # the cache is used
    sites = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
    with model.intervene(Set("blocks.0.hook_resid_post", torch.ones(64), positions=[-1]), Add(torch.ones(64), layer=1)):
        cached = model.capture(PROMPTS, sites, positions=[-1, -2], use_prefix_cache=True)
        full = model.capture(PROMPTS, sites, positions=[-1, -2], use_prefix_cache=False)
        for s in sites:
            assert close(cached[s], full[s], torch.float32), s
        assert close(model.logits(PROMPTS, use_prefix_cache=True), model.logits(PROMPTS, use_prefix_cache=False), torch.float32)
        assert model.generate(PROMPTS, max_new_tokens=4, use_prefix_cache=True) == model.generate(PROMPTS, max_new_tokens=4, use_prefix_cache=False)


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_sliding_window_shorter_than_the_prompts(smol, family):
    """A window shorter than the prompts: the cache holds only the window, and a single row continuing a prefix
    longer than the window still equals the full forward; padded batches skip the cache (pads would count)."""
    model = _tiny(smol, family, window=8)
    ids = model.encode(model.prepare_prompts(PROMPTS))
    assert shared_length(model, ids) == 0 and not usable(model, max(map(len, ids)))
    row = ids[1]
    prefix = PrefixKV.compute(model, [row[:-5]])
    suffix = model.pad([row[-5:]])
    with torch.no_grad():
        cached = model.hf(**prefix.inputs(suffix), output_hidden_states=True).hidden_states
        full = model.hf(**model.pad([row]).inputs(), use_cache=False, output_hidden_states=True).hidden_states
    for a, b in zip(cached[1:], full[1:]):
        assert close(a, b[:, -5:], torch.float32)
    assert close(model.logits(PROMPTS, use_prefix_cache=True), model.logits(PROMPTS, use_prefix_cache=False), torch.float32)


def test_prefix_cache_default_follows_the_device(smol):
    """`use_prefix_cache=None` means on for a CPU model (compute-bound), off on a GPU (launch-bound)."""
    assert wanted(smol, None) == (smol.device.type == "cpu")
    assert wanted(smol, True) and not wanted(smol, False)
