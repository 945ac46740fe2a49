"""Which programming language a generated answer is written in: the fence tag, else a lexer guess, else "none".

Used to measure concept steering of a code model (G-ACT, Sharma and Raman 2025): the share of answers in a target
language, and the share that are still code at all.

1. The info string of the first fenced code block ("```cpp") names the language, mapped to a canonical name
   (`ALIASES`).
2. Otherwise the code (the first fenced block's body, else the whole answer) is guessed: Pygments' lexers'
   own `analyse_text` scores for the candidate languages (Pygments' `guess_lexer` over every lexer it knows picks
   exotic ones for short snippets, e.g. "Tera Term macro" for a Rust function), and where they say nothing, a
   count of each language's signature patterns (`SIGNATURES`: `fn name(` and `println!` for Rust, `#include` and
   `std::` for C++, ...), the pattern count deciding.
3. No fence, no score: "none" (prose, or code in a language outside `LANGUAGES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from interp.errors import InterpError

LANGUAGES = ("python", "cpp", "java", "julia", "rust", "javascript", "go", "c", "csharp")
ALIASES = {
    "python": "python", "py": "python", "python3": "python", "py3": "python",
    "cpp": "cpp", "c++": "cpp", "cxx": "cpp", "cc": "cpp", "hpp": "cpp",
    "java": "java", "julia": "julia", "jl": "julia", "rust": "rust", "rs": "rust",
    "javascript": "javascript", "js": "javascript", "node": "javascript", "go": "go", "golang": "go",
    "c": "c", "h": "c", "csharp": "csharp", "c#": "csharp", "cs": "csharp",
}
PYGMENTS_NAMES = {"python": "python", "cpp": "cpp", "java": "java", "julia": "julia", "rust": "rust",
                  "javascript": "javascript", "go": "go", "c": "c", "csharp": "csharp"}
SIGNATURES: dict[str, tuple[str, ...]] = {
    "python": (r"^\s*def \w+\(.*\)\s*(->.*)?:\s*$", r"^\s*(from \w[\w.]* )?import \w", r"\bprint\(", r"^\s*elif\b",
               r"\bself\b", r":\s*$", r"\bNone\b", r"\bTrue\b|\bFalse\b", r"^\s*if __name__ == "),
    "cpp": (r"#include\s*<", r"\bstd::", r"\bint main\s*\(", r"\bcout\s*<<", r"\btemplate\s*<", r"\bvector<",
            r"\busing namespace std\b", r"\bauto\b", r"\bconst \w+&"),
    "java": (r"\bpublic (final )?class\b", r"\b(public|private|protected) static \w+", r"\bSystem\.out\.print",
             r"\bString\[\]", r"\bjava\.(util|io|lang)\.", r"\bnew \w+(<.*>)?\(", r"@Override", r"\bArrayList<",
             r"\.length\b"),
    "julia": (r"^\s*function \w+\(.*\)\s*$", r"^\s*end\s*$", r"\bprintln\(", r"::\s*(Int|Float64|String|Vector|Array)",
              r"\bVector\{", r"\busing \w+", r"\bfor \w+ in \d+:", r"\belseif\b"),
    "rust": (r"\bfn \w+\s*(<.*>)?\(", r"\blet (mut )?\w+", r"\bprintln!\(", r"\bVec<", r"&str\b", r"\bimpl\b",
             r"\buse std::", r"->\s*\w+", r"\bmatch \w+"),
    "javascript": (r"\bfunction \w+\s*\(", r"\bconst \w+\s*=", r"\bconsole\.log\(", r"=>", r"\blet \w+\s*=",
                   r"\bmodule\.exports\b", r"===", r"\brequire\("),
    "go": (r"^\s*package \w+", r"\bfunc \w+\(", r"\bfmt\.Print", r":=", r'\bimport \("|\bimport "'),
    "c": (r"#include\s*<(stdio|stdlib|string)\.h>", r"\bprintf\(", r"\bmalloc\(", r"\bint main\s*\("),
    "csharp": (r"\busing System\b", r"\bConsole\.Write", r"\bnamespace \w+", r"\bpublic static void Main\b"),
}
_FENCE = re.compile(r"```[ \t]*([^\s`]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


@dataclass(frozen=True)
class Detection:
    language: str  # a name in LANGUAGES, or "none"
    source: str  # "fence", "lexer", "signatures" or "none"
    fenced: bool  # the answer holds a fenced code block

    @property
    def is_code(self) -> bool:
        """Still code: a fenced block, or a language guessed from the text."""
        return self.fenced or self.language != "none"


def canonical(name: str) -> str:
    """The canonical name of a language ("C++" -> "cpp"); an unknown name is an error listing the known ones."""
    key = name.strip().lower()
    if key not in ALIASES:
        raise InterpError(f"unknown language {name!r}; known: {', '.join(LANGUAGES)} (and aliases such as c++, py, rs)")
    return ALIASES[key]


def _lexer_scores(code: str) -> dict[str, float]:
    from pygments.lexers import get_lexer_by_name

    scores = {}
    for lang, name in PYGMENTS_NAMES.items():
        try:
            scores[lang] = float(get_lexer_by_name(name).analyse_text(code) or 0.0)
        except Exception:  # a lexer's heuristic failing on odd text says nothing about the language
            scores[lang] = 0.0
    return scores


def _signature_scores(code: str) -> dict[str, int]:
    return {lang: sum(bool(re.search(p, code, re.M)) for p in pats) for lang, pats in SIGNATURES.items()}


def detect(answer: str) -> Detection:
    """The language of a generated answer (see the module docstring for the order of evidence)."""
    if not isinstance(answer, str):
        raise InterpError(f"detect takes the answer text (a str), got {type(answer).__name__}")
    m = _FENCE.search(answer)
    if m and m.group(1).strip().lower() in ALIASES:
        return Detection(ALIASES[m.group(1).strip().lower()], "fence", True)
    code = m.group(2) if m else answer
    lexed = _lexer_scores(code)
    best = max(lexed, key=lexed.get)
    if lexed[best] > 0.3:
        return Detection(best, "lexer", bool(m))
    sig = _signature_scores(code)
    best = max(sig, key=lambda k: (sig[k], lexed[k]))
    if sig[best] >= 2:
        return Detection(best, "signatures", bool(m))
    return Detection("none", "none", bool(m))
