"""Prompt and behaviour files, and the prompt sets bundled with the package (`interp/data/`, linked as `data/`).

One reader serves every format, so a prompt file and a behaviour file are the same thing seen twice:

- `.txt`: one prompt per line; blank lines are skipped.
- `.csv`: a header row; the prompt is the first column found among `goal`, `prompt`, `instruction`,
  `Behavior`, `question` (in that order, case-insensitive). AdvBench uses `goal,target`, HarmBench `Behavior`,
  the refusal-direction splits `instruction`, TruthfulQA `Question`.
- `.json`: a list of strings, or of objects with one of those keys.
- `.jsonl`: one string or object per line.

HarmBench's contextual behaviours carry a `ContextString`; where it is non-empty the prompt is
`context + "\\n\\n---\\n\\n" + behaviour`, the format HarmBench itself builds. Every text is stripped of
surrounding whitespace. Every bad file raises `InterpError` naming the file and the row.

The bundled sets (see data/README.md for sources and licences) are read with `dataset(name)`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from interp.errors import InterpError
from interp.io import jsonl_lines

PROMPT_KEYS: tuple[str, ...] = ("goal", "prompt", "instruction", "behavior", "question")
TARGET_KEY = "target"
ID_KEYS: tuple[str, ...] = ("id", "behaviorid")
CONTEXT_KEY = "contextstring"
FORMATS = ".txt (one prompt per line), .csv (a column goal, prompt, instruction, Behavior or question), " \
          ".json (a list of strings or of objects with one of those keys) or .jsonl (one string or object per line)"

DATA_DIR: Path = Path(__file__).resolve().parent  # package data; the repository root links to it

DATASETS: dict[str, str] = {
    "harmful_train": "refusal_splits/harmful_train.json",
    "harmful_val": "refusal_splits/harmful_val.json",
    "harmless_train": "refusal_splits/harmless_train.json",  # first 2000 of the 18,793 Alpaca rows
    "harmless_val": "refusal_splits/harmless_val.json",  # first 500 of the 6,264 Alpaca rows
    "advbench": "advbench/harmful_behaviors.csv",
    "harmbench": "harmbench/harmbench_behaviors_text_val.csv",
    "truthfulqa": "truthfulqa/TruthfulQA.csv",
    "code_tasks": "code_tasks/tasks.json",  # 210 programming tasks written for this project (concept steering)
}


@dataclass(frozen=True)
class Behavior:
    """One behaviour to attack: the request, an optional target completion (GCG's "Sure, here is ..."), an id."""

    behavior: str
    target: str | None
    id: str


@dataclass(frozen=True)
class _Row:
    where: str  # "line 3", "item [2]": for error messages
    value: Any  # a str or a dict


# ----- public readers -----

def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts in a .txt, .csv, .json or .jsonl file (see the module docstring for the layout)."""
    path = Path(path)
    return [_prompt_text(path, row) for row in _rows(path)]


def read_behaviors(path: str | os.PathLike) -> list[Behavior]:
    """Behaviours for attacks: the prompt as in `read_prompts`, `target` from a `target` column or key when
    present (empty -> None), `id` from an `id`/`BehaviorID` column or key, else `<file stem>-<index>`."""
    path = Path(path)
    out: list[Behavior] = []
    seen: dict[str, str] = {}
    for i, row in enumerate(_rows(path)):
        text = _prompt_text(path, row)
        target = _optional(path, row, (TARGET_KEY,))
        bid = _optional(path, row, ID_KEYS) or f"{path.stem}-{i}"
        if bid in seen:
            raise InterpError(f"{path}, {row.where}: behaviour id {bid!r} is already used at {seen[bid]}; ids must be unique")
        seen[bid] = row.where
        out.append(Behavior(text, target, bid))
    return out


def dataset_path(name: str) -> Path:
    """The file of a bundled set, for `read_behaviors` (AdvBench has targets) or for provenance."""
    if name not in DATASETS:
        raise InterpError(f"unknown dataset {name!r}; the bundled sets are: {', '.join(DATASETS)}")
    path = DATA_DIR / DATASETS[name]
    if not path.is_file():
        raise InterpError(f"the bundled data file {path} is missing; the package's data folder is incomplete "
                          "(reinstall interp-subspaces, or check out the repository again)")
    return path


def dataset(name: str, n: int | None = None, seed: int = 0) -> list[str]:
    """Prompts of a bundled set: harmful_train/harmful_val (Arditi et al. 2024), harmless_train/harmless_val
    (Alpaca subsets, CC BY-NC 4.0), advbench, harmbench, truthfulqa (questions).

    `n` draws a random subset of n prompts with a fixed seed (kept in file order), so the same call gives the
    same prompts on every machine.
    """
    prompts = read_prompts(dataset_path(name))
    if n is None:
        return prompts
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InterpError(f"n must be a positive integer (or None for all), got {n!r}")
    if n > len(prompts):
        raise InterpError(f"dataset {name!r} has {len(prompts)} prompts, fewer than the n={n} asked for")
    keep = sorted(random.Random(seed).sample(range(len(prompts)), n))
    return [prompts[i] for i in keep]


def split(prompts: Sequence[str], fractions: Sequence[float], seed: int = 0) -> list[list[str]]:
    """Shuffle with a fixed seed and cut into parts of the given fractions (which must sum to 1).

    `split(prompts, [0.8, 0.2])` -> [train, val]; sizes are rounded on the cumulative fractions, so every
    prompt lands in exactly one part. An empty part is an error.
    """
    if isinstance(prompts, str) or len(prompts) == 0:
        raise InterpError("split needs a non-empty list of prompts")
    if len(fractions) == 0 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise InterpError(f"fractions must be positive and sum to 1, got {list(fractions)}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    cuts, total = [0], 0.0
    for f in fractions:
        total += f
        cuts.append(round(total * len(prompts)))
    cuts[-1] = len(prompts)
    parts = [[prompts[i] for i in order[a:b]] for a, b in zip(cuts, cuts[1:])]
    for k, part in enumerate(parts):
        if not part:
            raise InterpError(f"part {k} (fraction {fractions[k]}) of {len(prompts)} prompts is empty; "
                              "use more prompts or larger fractions")
    return parts


# ----- parsing -----

def _rows(path: Path) -> list[_Row]:
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".csv", ".json", ".jsonl"):
        raise InterpError(f"{path}: unsupported prompt file type {path.suffix!r}; accepted formats: {FORMATS}")
    if not path.is_file():
        raise InterpError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InterpError(f"{path} is not UTF-8 text ({e}); save it as UTF-8") from e
    if not text.strip():
        raise InterpError(f"{path} is empty: it holds no prompts")
    rows = {".txt": _txt_rows, ".csv": _csv_rows, ".json": _json_rows, ".jsonl": _jsonl_rows}[suffix](path, text)
    if not rows:
        raise InterpError(f"{path} holds no prompts")
    return rows


def _txt_rows(path: Path, text: str) -> list[_Row]:
    return [_Row(f"line {i + 1}", line) for i, line in enumerate(text.splitlines()) if line.strip()]


def _csv_rows(path: Path, text: str) -> list[_Row]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c for c in (reader.fieldnames or []) if c is not None]
    if _find_key(columns, PROMPT_KEYS) is None:
        raise InterpError(f"{path}: no prompt column; expected one of {', '.join(PROMPT_KEYS)} "
                          f"(case-insensitive), the file has columns {columns}")
    rows = []
    for record in reader:
        if None in record:
            raise InterpError(f"{path}, line {reader.line_num}: more fields than the header's {len(columns)} columns")
        rows.append(_Row(f"line {reader.line_num}", record))
    return rows


def _json_rows(path: Path, text: str) -> list[_Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InterpError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise InterpError(f"{path}: expected a JSON list of strings or of objects, got a {type(data).__name__}")
    return [_Row(f"item [{i}]", value) for i, value in enumerate(data)]


def _jsonl_rows(path: Path, text: str) -> list[_Row]:
    return [_Row(f"line {number}", value) for number, value in jsonl_lines(path, text)]


def _find_key(keys, wanted: Sequence[str]) -> str | None:
    """The first key of `keys` matching `wanted`, in the order of `wanted`, ignoring case."""
    lowered = {str(k).lower(): k for k in keys}
    for w in wanted:
        if w in lowered:
            return lowered[w]
    return None


def _prompt_text(path: Path, row: _Row) -> str:
    value = row.value
    if isinstance(value, dict):
        key = _find_key(value, PROMPT_KEYS)
        if key is None:
            raise InterpError(f"{path}, {row.where}: the object has none of the keys {', '.join(PROMPT_KEYS)} "
                              f"(it has {list(value)})")
        text = _string(path, row, value[key], key)
        context_key = _find_key(value, (CONTEXT_KEY,))
        if context_key is not None and isinstance(value[context_key], str) and value[context_key].strip():
            text = f"{value[context_key].strip()}\n\n---\n\n{text}"
        return text
    return _string(path, row, value, None)


def _string(path: Path, row: _Row, value: Any, key: str | None) -> str:
    what = f"the {key!r} value" if key else "the entry"
    if not isinstance(value, str):
        expected = "a string" if key else f"a string or an object with a key {', '.join(PROMPT_KEYS)}"
        raise InterpError(f"{path}, {row.where}: {what} is a {type(value).__name__}, expected {expected}")
    if not value.strip():
        raise InterpError(f"{path}, {row.where}: {what} is empty; remove the row or fill it in")
    return value.strip()


def _optional(path: Path, row: _Row, keys: Sequence[str]) -> str | None:
    """An optional string field (target, id): None when absent or empty, an error when not a string."""
    if not isinstance(row.value, dict):
        return None
    key = _find_key(row.value, keys)
    if key is None or row.value[key] is None:
        return None
    value = row.value[key]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InterpError(f"{path}, {row.where}: the {key!r} value is a {type(value).__name__}, expected a string")
    return value.strip() or None
