"""Each judge's error rates, measured against the hand-labelled answers.

benchmarks/judges.py scores every judge against tests/data/labelled_answers.json (answers of both bundled models,
labelled by reading them) and `export_errors` keeps the headline of that measurement in the package data file
interp/data/judges/measured_errors.json, so that a Result reporting a rate can state its judge's error rates beside
it without the benchmarks folder. tests/test_judges.py checks the file against benchmarks/results/judges.json.

A judge's name here is the benchmark's: "substring_refusal" (refusal = a stock refusal phrase),
"substring_success" (attack success = non-empty and no refusal phrase), "substantive_success" (attack success = a
substantive answer), "first_token_refusal" (the greedy first token is a refusal token).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from interp.data.prompts import DATA_DIR

MEASURED_ERRORS: Path = DATA_DIR / "judges" / "measured_errors.json"
SOURCE = "benchmarks/results/judges.json"


def export_errors(judges_result: dict[str, Any]) -> dict[str, Any]:
    """The package file's content from the judges benchmark's result: per judge what it claims, the number of
    labelled answers, agreement and the false-positive / false-negative rates (None where undefined), and the
    provenance of the measurement."""
    judges = {}
    for name, j in judges_result["judges"].items():
        o = j.get("overall", {})
        if "fp_rate" not in o:  # the four-way label agreement has no FP/FN rates
            continue
        judges[name] = {"claims": j["claims"], "n": o["n"], "agreement": o["agreement"], "fp_rate": o["fp_rate"],
                        "fn_rate": o["fn_rate"]}
    return {"source": SOURCE, "git_commit": judges_result.get("git_commit"),
            "labelled": judges_result["labelled"]["n"], "judges": judges}


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    return json.loads(MEASURED_ERRORS.read_text(encoding="utf-8")) if MEASURED_ERRORS.is_file() else {"judges": {}}


def measured_errors(judge: str) -> dict[str, Any] | None:
    """{"judge", "claims", "n", "agreement", "fp_rate", "fn_rate", "source"} of a judge, or None when it was not
    measured (a chat-model judge with another model, a classifier of your own)."""
    j = _load()["judges"].get(judge)
    return None if j is None else {"judge": judge, **j, "source": SOURCE}


def error_note(judge: str) -> str:
    """One line to print beside a rate: the judge's measured error rates, or that they were not measured."""
    m = measured_errors(judge)
    if m is None:
        return f"{judge} judge: error rates not measured on the hand-labelled answers"
    rates = ", ".join(f"{k} {'–' if m[k] is None else f'{m[k]:.2f}'}" for k in ("fp_rate", "fn_rate"))
    return f"{judge} judge on {m['n']} hand-labelled answers: {rates} ({SOURCE})"
