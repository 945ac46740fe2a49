"""A randomly initialised stand-in for a bundled model, for running the plumbing tests where the model
packages cannot go (a lent GPU machine: the packages are hundreds of MB and the machine cannot download).

    python -m benchmarks.standin --skeleton smollm2-135m-instruct --out DIR   # here: config + tokenizer, no weights
    python -m benchmarks.standin --install DIR                                  # there: random weights into the cache

The stand-in has the real config, tokenizer and chat template, and random weights (seed 0), so tests that
compare two computation paths (prefix cache vs full forward, batched vs one at a time, hooks removed, device
placement) run unchanged, while tests of real behaviour (refusal, steering effects) are meaningless on it.
Its ready marker says `"standin": "random weights"`, so it can never be mistaken for the prepared model.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from interp.data.registry import READY_MARKER, model_dir
from interp.io import write_json

SKELETON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "chat_template.jinja", "special_tokens_map.json")


def skeleton(name: str, out: Path) -> Path:
    """Copy a prepared bundled model's folder without its weights."""
    src = model_dir(name)
    if not (src / READY_MARKER).is_file():
        raise SystemExit(f"error: {name} is not prepared here; run `interp models prepare {name}` first")
    out.mkdir(parents=True, exist_ok=True)
    for f in SKELETON_FILES:
        if (src / f).is_file():
            shutil.copy2(src / f, out / f)
    (out / "name").write_text(name)
    return out


def install(folder: Path) -> Path:
    """Write a random-weight model built from the skeleton's config into the model cache, under its name."""
    from transformers import AutoConfig, AutoModelForCausalLM

    name = (folder / "name").read_text().strip()
    target = model_dir(name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    model.save_pretrained(target)
    for f in SKELETON_FILES:
        if f != "config.json" and (folder / f).is_file():
            shutil.copy2(folder / f, target / f)
    write_json(target / READY_MARKER, {"name": name, "standin": "random weights", "dtype": "float32"})
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skeleton", metavar="NAME", help="bundled model whose config and tokenizer to copy")
    parser.add_argument("--out", type=Path, help="folder for --skeleton")
    parser.add_argument("--install", type=Path, metavar="DIR", help="skeleton folder to install with random weights")
    args = parser.parse_args()
    if args.skeleton and args.out:
        print(skeleton(args.skeleton, args.out))
    elif args.install:
        print(install(args.install))
    else:
        parser.error("give --skeleton NAME --out DIR, or --install DIR")


if __name__ == "__main__":
    main()
