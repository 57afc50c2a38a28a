"""Answer extraction from model output and answer equivalence checking."""

from __future__ import annotations

import logging
import math
import re

DEFAULT_REL_TOL = 1e-6
DEFAULT_MAX_VERIFY_CHARS = 400  # longer answers skip math_verify (it has no timeout here)
CHOICE_LETTERS = "ABCDE"
BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
ANSWER_LINE_RE = re.compile(
    r"^[\s*#>_]*(?:(?:final )?answer[*_]*\s*:|the (?:final )?answer is\b\s*:?|####)(.*)$",
    re.IGNORECASE | re.MULTILINE,
)
NUMBER_RE = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:/\d+)?|\.\d+)")
TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm|mathbf)\s*\{([^{}]*)\}")
CHOICE_RE = re.compile(rf"^\(?([{CHOICE_LETTERS}])(?:\)|\.|:|\s|$)")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every brace-balanced \\boxed{...} / \\fbox{...}, in order."""
    found = []
    for match in BOX_RE.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            if text[i] == "\\":
                i += 2  # skip escaped chars such as \{ and \}
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found.append(text[match.end() : i - 1].strip())
    return found


def extract_answer(text: str) -> str | None:
    """Return the last boxed answer, else an 'Answer:' line, else the last number, else None."""
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1]
    lines = list(ANSWER_LINE_RE.finditer(text))
    if lines:
        answer = lines[-1].group(1).strip()
        if not answer:  # "Answer:" alone on its line: take the next non-empty line
            rest = text[lines[-1].end() :].splitlines()
            answer = next((ln.strip() for ln in rest if ln.strip()), "")
        answer = answer.strip("* ").rstrip(".").strip()
        if answer:
            return answer
    numbers = NUMBER_RE.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def gold_answer(raw: str) -> str:
    """Return the part after the last '####' (GSM8K style) if present, else the stripped string."""
    return raw.rsplit("####", 1)[1].strip() if "####" in raw else raw.strip()


def normalize_answer(text: str) -> str:
    """Canonicalise an answer string for the string/numeric fallback comparison."""
    s = text.strip()
    prev = None
    while prev != s:
        prev, s = s, TEXT_CMD_RE.sub(r"\1", s)
    s = re.sub(r"(?<!\\)\\[!,;: ]|\\left\b|\\right\b", "", s)  # spacing, \left( ... \right)
    for old in ("\\$", "$", "\\%", "%", "°"):
        s = s.replace(old, "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s)
    s = re.sub(r"\\(frac|sqrt)\s*(\d)", r"\\\1{\2}", s)  # \frac12 -> \frac{1}2, \sqrt2 -> \sqrt{2}
    s = re.sub(r"(\\frac\{[^{}]*\})\s*(\d)", r"\1{\2}", s)  # \frac{1}2 -> \frac{1}{2}
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(\d+\.\d*?)0+(?=\D|$)", r"\1", s)  # 18.500 -> 18.5, 18.00 -> 18.
    s = re.sub(r"(\d)\.(?=\D|$)", r"\1", s)  # 18. -> 18
    return s


def _to_float(s: str) -> float | None:
    """Parse a normalised plain number, a/b or \\frac{a}{b} into a float."""
    m = re.fullmatch(r"(-?)(?:\\frac\{(-?[\d.]+)\}\{([\d.]+)\}|([\d.]+)/([\d.]+))", s)
    try:
        if m:
            num, den = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
            return (-1 if m.group(1) else 1) * float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def _choice(text: str) -> str | None:
    """The choice letter an answer names ('(B)', 'B.', 'B) text', '\\text{B}'), else None."""
    plain = "\\" not in text and "$" not in text
    m = CHOICE_RE.match(text.strip() if plain else normalize_answer(text))
    return m.group(1) if m else None


def _strings_equal(a: str, b: str) -> bool:
    """Fallback comparison: normalised string equality or numeric closeness."""
    na, nb = normalize_answer(a), normalize_answer(b)
    if na == nb or (na.isalpha() and na.lower() == nb.lower()):
        return bool(na)
    fa, fb = _to_float(na), _to_float(nb)
    return fa is not None and fb is not None and math.isclose(fa, fb, rel_tol=DEFAULT_REL_TOL)


def _drop_timeout_notice(record: logging.LogRecord) -> bool:
    """Logging filter: hide math_verify's notice that we disabled its signal timeouts on purpose."""
    return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_drop_timeout_notice)


def _math_verify_equal(predicted: str, gold: str) -> bool:
    """math_verify's judgement with signal timeouts disabled; any failure counts as not equal."""
    if max(len(predicted), len(gold)) > DEFAULT_MAX_VERIFY_CHARS:
        return False
    try:
        from math_verify import parse, verify

        def parses(s: str) -> list:
            if "$" in s.replace("\\$", "") or "\\boxed" in s:
                forms = [s]
            else:  # bare LaTeX: give math_verify delimiters it can find
                forms = [f"${s}$", f"\\boxed{{{s}}}"]
            return [p for f in forms if (p := parse(f, parsing_timeout=None))]

        golds, preds = parses(gold), parses(predicted)
        return any(verify(g, p, timeout_seconds=None) for g in golds for p in preds)
    except Exception:  # noqa: BLE001 - math_verify/sympy can raise anything on odd input
        return False


def is_equivalent(predicted: str | None, gold: str) -> bool:
    """Judge whether a predicted answer matches the gold answer."""
    if predicted is None:
        return False
    gold_letter = re.fullmatch(rf"\(?[{CHOICE_LETTERS}][).]?", normalize_answer(gold))
    if gold_letter:
        return _choice(predicted) == _choice(gold)
    return _strings_equal(predicted, gold) or _math_verify_equal(predicted, gold)
