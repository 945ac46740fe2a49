"""Which programming language a generated answer is written in: the fence tag, else a guess from the code, else "none".

Used to measure concept steering of a code model (G-ACT, Sharma and Raman 2025): the share of answers in a target
language, and the share that are still code at all.

1. The info string of the first fenced code block whose tag names a known language ("```cpp", "```C++") decides,
   mapped to a canonical name (`ALIASES`). Code models tag their blocks, so this is the usual case.
2. Otherwise the code (the bodies of the fenced blocks, else the whole answer) is guessed. Each candidate language
   scores the number of its signature patterns found (`SIGNATURES`: `fn name(` and `println!` for Rust,
   `#include` and `std::` for C++, ...) plus Pygments' own `analyse_text` score for it (0 to 1). The best score
   wins if it is at least 2 (two signatures, or one and a confident lexer). Pygments alone misfires on real
   answers: its Python heuristic says 1.0 for any text holding "import " (Java's `import java.util.*;`, Go's
   `import "fmt"`), and `guess_lexer` over every lexer it knows picks exotic ones for short snippets ("Tera Term
   macro" for a Rust function); so it only adds to the signatures, restricted to the candidate languages.
3. Nothing decisive: "none" (prose, or code in a language outside `LANGUAGES`).
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
    "csharp": (r"\busing System(\.\w+)*;", r"\bConsole\.Write", r"\bnamespace \w+", r"\bstatic void Main\b",
               r"\.Length\b", r"\bforeach\s*\(", r"\b(public|private|internal) (static )?\w+(\[\])? [A-Z]\w*\(",
               r"\bstring(\[\])? \w+\s*[=;,)]"),
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
    blocks = _FENCE.findall(answer)
    for tag, _ in blocks:
        if tag.strip().lower() in ALIASES:
            return Detection(ALIASES[tag.strip().lower()], "fence", True)
    code = "\n".join(body for _, body in blocks) if blocks else answer
    sig, lexed = _signature_scores(code), _lexer_scores(code)
    total = {lang: sig[lang] + lexed[lang] for lang in LANGUAGES}
    best = max(LANGUAGES, key=lambda k: (total[k], sig[k]))  # ties: more signatures, then LANGUAGES order
    if total[best] >= 2:
        return Detection(best, "signatures" if sig[best] >= 2 else "lexer", bool(blocks))
    return Detection("none", "none", bool(blocks))
