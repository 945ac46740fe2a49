"""Prompt/behaviour files in every format, their errors, and the bundled sets."""

import json

import pytest
import torch

from interp.data.prompts import DATA_DIR, DATASETS, Behavior, dataset, dataset_path, read_behaviors, read_prompts, split
from interp.errors import InterpError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ----- formats -----

def test_txt_skips_blank_lines(tmp_path):
    p = write(tmp_path, "p.txt", "first prompt\n\n  \nsecond prompt  \n")
    assert read_prompts(p) == ["first prompt", "second prompt"]


def test_csv_column_priority_and_case(tmp_path):
    p = write(tmp_path, "p.csv", 'Behavior,prompt,x\n"b1, with comma",p1,1\nb2,p2,2\n')
    assert read_prompts(p) == ["p1", "p2"]  # prompt comes before Behavior
    q = write(tmp_path, "q.csv", "BEHAVIOR,x\nb1,1\n")
    assert read_prompts(q) == ["b1"]


def test_json_strings_and_objects(tmp_path):
    assert read_prompts(write(tmp_path, "a.json", json.dumps(["x", "y"]))) == ["x", "y"]
    objs = [{"instruction": "do a", "category": None}, {"goal": "do b"}]
    assert read_prompts(write(tmp_path, "b.json", json.dumps(objs))) == ["do a", "do b"]


def test_jsonl_mixed(tmp_path):
    p = write(tmp_path, "a.jsonl", '"plain"\n\n{"prompt": "obj", "target": "Sure"}\n')
    assert read_prompts(p) == ["plain", "obj"]


def test_harmbench_context_is_prepended(tmp_path):
    p = write(tmp_path, "h.csv", "Behavior,ContextString,BehaviorID\nSummarise it,Some text,ctx1\nPlain one,,plain1\n")
    assert read_prompts(p) == ["Some text\n\n---\n\nSummarise it", "Plain one"]
    assert [b.id for b in read_behaviors(p)] == ["ctx1", "plain1"]


# ----- behaviours -----

def test_behaviors_targets_and_ids(tmp_path):
    p = write(tmp_path, "adv.csv", "goal,target\nDo x,\"Sure, here is x\"\nDo y,\n")
    assert read_behaviors(p) == [Behavior("Do x", "Sure, here is x", "adv-0"), Behavior("Do y", None, "adv-1")]
    q = write(tmp_path, "b.jsonl", '{"behavior": "b", "id": 7}\n"c"\n')
    assert read_behaviors(q) == [Behavior("b", None, "7"), Behavior("c", None, "b-1")]


def test_behaviors_duplicate_id(tmp_path):
    p = write(tmp_path, "d.json", json.dumps([{"goal": "a", "id": "k"}, {"goal": "b", "id": "k"}]))
    with pytest.raises(InterpError, match=r"item \[1\].*'k'.*unique"):
        read_behaviors(p)


def test_behaviors_empty_row_named(tmp_path):
    p = write(tmp_path, "adv.csv", "goal,target\nDo x,Sure\n,Sure\n")
    with pytest.raises(InterpError, match="line 3.*empty"):
        read_behaviors(p)


# ----- errors -----

@pytest.mark.parametrize("name,text,pattern", [
    ("p.md", "x", r"unsupported.*\.md.*\.txt.*\.csv.*\.json.*\.jsonl"),
    ("e.txt", "\n  \n", "empty"),
    ("e.json", "[]", "no prompts"),
    ("h.csv", "goal,target\n", "no prompts"),
    ("c.csv", "text,label\nhello,1\n", r"no prompt column.*goal.*\['text', 'label'\]"),
    ("d.json", '{"prompts": ["a"]}', "expected a JSON list.*dict"),
    ("k.json", '[{"text": "a"}]', r"item \[0\].*none of the keys.*\['text'\]"),
    ("n.json", '["a", 3]', r"item \[1\].*int"),
    ("v.json", '[{"prompt": ["a"]}]', r"item \[0\].*'prompt' value is a list"),
    ("b.json", '["a", "  "]', r"item \[1\].*empty"),
    ("l.jsonl", '"a"\n{"prompt": ""}\n', "line 2.*empty"),
    ("r.csv", "prompt\nok\n\"\"\n", "line 3.*empty"),
    ("x.json", "[1,", "not valid JSON"),
    ("y.jsonl", '"a"\n{oops\n', "line 2.*not valid JSON"),
    ("w.csv", "prompt\na,b\n", "line 2.*more fields"),
])
def test_clear_errors(tmp_path, name, text, pattern):
    with pytest.raises(InterpError, match=pattern):
        read_prompts(write(tmp_path, name, text))


def test_missing_file(tmp_path):
    with pytest.raises(InterpError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")


# ----- bundled sets -----

@pytest.mark.parametrize("name,count", [("harmful_train", 260), ("harmful_val", 39), ("harmless_train", 2000),
                                        ("harmless_val", 500), ("advbench", 520), ("harmbench", 80), ("truthfulqa", 817)])
def test_bundled_sets(name, count):
    prompts = dataset(name)
    assert len(prompts) == count
    assert all(isinstance(p, str) and p.strip() == p and p for p in prompts)
    assert (dataset_path(name).parent / "LICENSE").is_file()


def test_bundled_contents():
    assert dataset("harmless_train")[0] == "Can you recommend a chocolate cake recipe for two?"
    adv = read_behaviors(dataset_path("advbench"))
    assert adv[0].target.startswith("Sure, here is") and adv[0].behavior.startswith("Write a script")
    assert (DATA_DIR / "README.md").read_text().count("CC BY-NC 4.0") >= 1
    assert set(DATASETS) >= {"harmful_train", "harmful_val", "harmless_train", "harmless_val", "advbench", "harmbench"}


def test_subset_is_seeded():
    a, b, c = dataset("advbench", n=5, seed=1), dataset("advbench", n=5, seed=1), dataset("advbench", n=5, seed=2)
    assert a == b and a != c and len(set(a)) == 5
    full = dataset("advbench")
    assert [full.index(x) for x in a] == sorted(full.index(x) for x in a)  # file order kept


def test_dataset_errors():
    with pytest.raises(InterpError, match="unknown dataset 'harmfull'.*harmful_train.*advbench"):
        dataset("harmfull")
    with pytest.raises(InterpError, match="39 prompts, fewer than the n=40"):
        dataset("harmful_val", n=40)
    with pytest.raises(InterpError, match="positive integer"):
        dataset("harmful_val", n=0)


def test_split():
    prompts = [f"p{i}" for i in range(10)]
    train, val = split(prompts, [0.7, 0.3], seed=0)
    assert len(train) == 7 and len(val) == 3 and sorted(train + val) == sorted(prompts)
    assert split(prompts, [0.7, 0.3], seed=0) == [train, val] != split(prompts, [0.7, 0.3], seed=1)
    with pytest.raises(InterpError, match="sum to 1"):
        split(prompts, [0.5, 0.4])
    with pytest.raises(InterpError, match="empty"):
        split(prompts[:2], [0.9, 0.1])


# ----- one rule for special tokens -----

def _with_bos(model):
    """The same weights behind a copy of the tokenizer that adds BOS by itself (as Llama's and Gemma's do)."""
    import copy

    from tokenizers.processors import TemplateProcessing

    import interp

    tok = copy.deepcopy(model.tokenizer)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                              special_tokens=[(bos, tok.bos_token_id)])
    assert tok("Hi").input_ids[0] == tok.bos_token_id
    return interp.Model(model.hf, tok, model.name + "-bos")


def test_capture_logits_generate_and_attack_tokenize_a_prompt_alike(smol):
    """A raw prompt (chat=False) gets the tokenizer's BOS, a chat-formatted one keeps the template's own, exactly
    once, in capture, logits, generate and the attack engine alike (Model.encode used to drop BOS for raw prompts
    of a chat model while build_prompt added it, so every attack candidate failed the retokenisation check)."""
    from interp.attacks import GCGLoss, TokenSearch, build_prompt

    model = _with_bos(smol)
    bos, raw = model.tokenizer.bos_token_id, "Tell me a story about a cat"
    want_raw = [bos] + model.tokenizer(raw, add_special_tokens=False).input_ids
    chat_text = model.prepare_prompts([raw])[0]
    want_chat = model.tokenizer(chat_text, add_special_tokens=False).input_ids
    assert want_chat[0] == bos and want_chat[1] != bos  # the template writes BOS itself (SmolLM2's is <|im_start|>)
    seen: list[list[int]] = []
    pad = model.pad
    model.pad = lambda ids: (seen.extend(list(map(list, ids))), pad(ids))[1]
    for chat, want in ((False, want_raw), (True, want_chat)):
        seen.clear()
        model.capture([raw], "blocks.0.hook_resid_post", chat=chat)
        model.logits([raw], chat=chat)
        model.generate([raw], max_new_tokens=1, chat=chat)
        assert seen == [want] * 3
        p = build_prompt(model, "{behavior}[MASK][MASK]", raw, chat=chat)
        assert p.ids[:p.prefix_len] == want[:p.prefix_len] and p.ids[p.prefix_len - 1] == want_raw[-1]  # up to the mask
        init = torch.tensor([[p.ids[i] for i in p.mask_positions]])
        assert TokenSearch(model, GCGLoss()).retokenizes(p, init, chat=chat).all()
