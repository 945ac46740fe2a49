"""The language detector for generated answers: fence tags, hand-written code of each language with and without a
fence, prose, and the unknown-language error."""

from __future__ import annotations

import pytest

from interp.errors import InterpError
from interp.judges.languages import LANGUAGES, canonical, detect

SNIPPETS = {
    "python": "def median(xs):\n    xs = sorted(xs)\n    n = len(xs)\n    if n % 2:\n        return xs[n // 2]\n"
              "    return (xs[n // 2 - 1] + xs[n // 2]) / 2\n",
    "cpp": "#include <vector>\n#include <algorithm>\n\ndouble median(std::vector<double> xs) {\n"
           "    std::sort(xs.begin(), xs.end());\n    size_t n = xs.size();\n"
           "    return n % 2 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2.0;\n}\n",
    "java": "import java.util.Arrays;\n\npublic class Median {\n    public static double median(double[] xs) {\n"
            "        double[] s = xs.clone();\n        Arrays.sort(s);\n        int n = s.length;\n"
            "        return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2.0;\n    }\n}\n",
    "julia": "function median(xs::Vector{Float64})\n    s = sort(xs)\n    n = length(s)\n    if isodd(n)\n"
             "        return s[div(n, 2) + 1]\n    end\n    return (s[div(n, 2)] + s[div(n, 2) + 1]) / 2\nend\n",
    "rust": "fn median(xs: &mut Vec<f64>) -> f64 {\n    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());\n"
            "    let n = xs.len();\n    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }\n}\n",
    "javascript": "function median(xs) {\n  const s = [...xs].sort((a, b) => a - b);\n  const n = s.length;\n"
                  "  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;\n}\nconsole.log(median([3, 1, 2]));\n",
    "go": "package main\n\nimport (\n\t\"fmt\"\n\t\"sort\"\n)\n\nfunc median(xs []float64) float64 {\n"
          "\tsort.Float64s(xs)\n\tn := len(xs)\n\tif n%2 == 1 {\n\t\treturn xs[n/2]\n\t}\n"
          "\treturn (xs[n/2-1] + xs[n/2]) / 2\n}\n\nfunc main() { fmt.Println(median([]float64{3, 1, 2})) }\n",
    "c": "#include <stdio.h>\n#include <stdlib.h>\n\nint cmp(const void *a, const void *b) { return (*(int *)a - *(int *)b); }\n\n"
         "int main(void) {\n    int xs[] = {3, 1, 2};\n    qsort(xs, 3, sizeof(int), cmp);\n"
         "    printf(\"%d\\n\", xs[1]);\n    return 0;\n}\n",
    "csharp": "using System;\nusing System.Linq;\n\npublic static class Stats\n{\n    public static double Median(double[] xs)\n"
              "    {\n        var s = xs.OrderBy(x => x).ToArray();\n        int n = s.Length;\n"
              "        return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2.0;\n    }\n}\n",
}
PROSE = [
    "The median is the middle value of a sorted list: sort the numbers, then take the middle one.",
    "Sure! First, sort the list. Then, if its length is odd, return the middle element; otherwise average the two.",
]


def test_every_language_has_a_snippet():
    assert set(SNIPPETS) == set(LANGUAGES)


@pytest.mark.parametrize("language", LANGUAGES)
def test_unfenced_code_is_guessed(language):
    got = detect(SNIPPETS[language])
    assert got.language == language and got.source in ("signatures", "lexer") and not got.fenced and got.is_code


@pytest.mark.parametrize("language", LANGUAGES)
def test_untagged_fence_is_guessed_from_its_body(language):
    answer = f"Here is the function:\n\n```\n{SNIPPETS[language]}```\n\nIt runs in O(n log n)."
    got = detect(answer)
    assert got.language == language and got.fenced and got.is_code


@pytest.mark.parametrize("tag, language", [("cpp", "cpp"), ("C++", "cpp"), ("py", "python"), ("rs", "rust"),
                                           ("java", "java"), ("julia", "julia"), ("csharp", "csharp")])
def test_fence_tag_decides_even_against_the_body(tag, language):
    """The tag wins (a Python body under a C++ tag is C++: the model said so), also when the block is cut off."""
    got = detect(f"Certainly! Below is the code.\n\n```{tag}\n{SNIPPETS['python']}")
    assert (got.language, got.source, got.fenced) == (language, "fence", True)


def test_first_known_tag_wins_over_an_unknown_one():
    answer = f"Compile it with:\n```bash\ng++ -O2 median.cpp\n```\nThe code:\n```rust\n{SNIPPETS['rust']}```"
    assert detect(answer).language == "rust"


def test_python_lexer_heuristic_does_not_claim_java_or_go():
    """Pygments' Python heuristic scores any text with "import " as Python; the signatures outvote it."""
    assert detect(SNIPPETS["java"]).language == "java" and detect(SNIPPETS["go"]).language == "go"


@pytest.mark.parametrize("text", PROSE)
def test_prose_is_none_and_not_code(text):
    got = detect(text)
    assert (got.language, got.source, got.fenced, got.is_code) == ("none", "none", False, False)


def test_fenced_prose_in_an_unknown_language_is_code_of_no_known_language():
    got = detect("```text\nsort, then take the middle\n```")
    assert got.language == "none" and got.fenced and got.is_code


def test_canonical_names_and_the_unknown_language_error():
    assert [canonical(n) for n in ("C++", " cpp ", "Python", "rs", "C#", "golang")] == \
        ["cpp", "cpp", "python", "rust", "csharp", "go"]
    with pytest.raises(InterpError, match="unknown language 'cobol'.*known: python, cpp"):
        canonical("cobol")
    with pytest.raises(InterpError, match="answer text"):
        detect(None)
