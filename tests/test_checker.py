"""Tests for glimp_cli.checker: answer extraction, gold parsing and equivalence."""

import json
import threading
from pathlib import Path

import pytest

from conftest import SHARED_DATA, GSM8K
from glimp_cli.checker import (
    extract_answer,
    gold_answer,
    is_equivalent,
    normalize_answer,
)

MATH500 = SHARED_DATA / "math500.jsonl"


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        pytest.skip(f"dataset not found at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _boxed_in_text(gold: str) -> str:
    return f"... so the answer is \\boxed{{{gold}}}."


# --- extract_answer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"first \boxed{3}, then corrected: \boxed{4}", "4"),
        (r"\boxed {7}", "7"),
        (r"\fbox{x+1}", "x+1"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
        ("We compute 6*7.\nAnswer: 42", "42"),
        ("Work...\nFinal answer: x = 3.", "x = 3"),
        ("Work...\nthe answer is (B).", "(B)"),
        ("Working 1 and 2\n**Answer:** 12\n", "12"),
        ("Answer: 1\nlater\nAnswer: 2", "2"),
        ("Answer:\n\n  9\n", "9"),
        ("steps\n#### 72", "72"),
        ("**Final Answer**: 8", "8"),
        ("The final answer is: $5$.", "$5$"),
        ("Answer the question first: 3 then 4 cats", "4"),
        ("Answers vary: 3 or 11", "11"),
        ("so 3 then 17 apples", "17"),
        ("she paid $1,234 in total", "1234"),
        ("it costs 1,234.50 now", "1234.50"),
        ("the temperature is -5 degrees", "-5"),
        ("ratio 3/4 of the pie", "3/4"),
        ("about 2.5 hours", "2.5"),
        ("from 3-5 people", "5"),
        ("no digits here at all", None),
        ("", None),
    ],
)
def test_extract_answer_cases(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_prefers_boxed_over_answer_line_and_numbers():
    assert extract_answer("\\boxed{5}\nAnswer: 6 and 7") == "5"


def test_extract_answer_unbalanced_boxed_falls_back_to_last_number():
    # An unclosed \boxed{ (e.g. truncated output) is ignored; the number fallback then applies.
    assert extract_answer(r"so the answer is \boxed{12") == "12"


def test_extract_answer_unbalanced_last_boxed_uses_earlier_balanced_one():
    # Only brace-balanced boxes count, so an earlier complete box beats a truncated final one.
    assert extract_answer(r"\boxed{3} hmm, actually \boxed{\frac{1}{2") == "3"


def test_extract_answer_unbalanced_boxed_uses_answer_line_before_numbers():
    assert extract_answer("\\boxed{\\frac{1}{2\nAnswer: 1/2") == "1/2"


# --- gold_answer ------------------------------------------------------------------------------


def test_gold_answer_takes_text_after_last_hashes():
    assert gold_answer("She has 3+4=7 eggs.\n#### 7") == "7"
    assert gold_answer("a #### b\n####  1,000 \n") == "1,000"


def test_gold_answer_without_hashes_is_stripped_raw():
    assert gold_answer("  18\n") == "18"


def test_gold_answer_on_first_gsm8k_rows():
    rows = _rows(GSM8K)[:20]
    for row in rows:
        gold = gold_answer(row["answer"])
        expected = row["answer"].split("####")[-1].strip()
        assert gold == expected
        assert gold and "####" not in gold
        assert is_equivalent(extract_answer(f"Reasoning...\n#### {gold}"), gold)
    assert gold_answer(rows[0]["answer"]) == "18"


# --- is_equivalent ----------------------------------------------------------------------------

EQUIVALENT = [
    (r"\frac12", "0.5"),
    (r"\frac12", "1/2"),
    ("0.5", "1/2"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\pi/2)"),
    ("18", "$18"),
    ("18", "18.00"),
    ("$18", "18.00"),
    (r"\dfrac{3}{4}", "0.75"),
    (r"\tfrac{3}{4}", r"\frac34"),
    (r"10\%", "10"),
    ("1,000", "1000"),
    (r"\$32,\!348", "32348"),
    (r"10,\!080", "10080"),
    (r"\text{(B)}", "B"),
    (r"90^\circ", "90"),
    (r"90^{\circ}", "90"),
    (r"\text{Evelyn}", "Evelyn"),
    (r"\text{east}", "East"),
    ("x=5", "5"),
    (r"5.4 \text{ cents}", "5.4"),
    (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"),
    (r"2\sqrt{5}", r"\sqrt{20}"),
    (r"\{1\pm\sqrt{5},-2\}", r"-2, 1+\sqrt5, 1-\sqrt5"),
    (r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}", r"\begin{pmatrix} 0.2 \\ -3.6 \end{pmatrix}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("y = 2x + 3", "y=3+2x"),
    ("1 - 12i", "1-12i"),
    (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}"),
    ("0.333333333", "1/3"),
    ("-0.5", r"-\frac{1}{2}"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent_forms_are_equal_both_ways(a, b):
    assert is_equivalent(a, b) is True
    assert is_equivalent(b, a) is True


NOT_EQUIVALENT = [
    ("18", "18.5"),
    ("1/2", "1/3"),
    (r"(3, \pi/2)", r"(3, \pi/3)"),
    ("B", "C"),
    ("(B)", "A"),
    ("-5", "5"),
    ("x+1", "x-1"),
    ("1000", "100"),
    ("(1,2)", "(2,1)"),
    ("[2,3]", "(2,3)"),
    (r"\sqrt{2}", "2"),
    ("0", "1"),
    ("1,2", "12"),
    ("5", "5i"),
    ("2k", "2k+2"),
    (r"\text{east}", "west"),
    ("1.000001", "1.01"),
]


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_near_misses_are_unequal_both_ways(a, b):
    assert is_equivalent(a, b) is False
    assert is_equivalent(b, a) is False


@pytest.mark.parametrize("predicted", ["B", "(B)", "B.", "B) 42 apples", r"\text{B}", r"\text{(B)}", "$B$", " B "])
@pytest.mark.parametrize("gold", ["B", "(B)", "B)", "B.", r"\text{(B)}"])
def test_multiple_choice_letters_compare_as_letters(predicted, gold):
    assert is_equivalent(predicted, gold) is True


@pytest.mark.parametrize("predicted", ["C", "(C)", "Bob", "b", "", "42"])
def test_multiple_choice_wrong_or_unreadable_letters_are_unequal(predicted):
    assert is_equivalent(predicted, "B") is False


def test_none_prediction_is_never_equal():
    assert is_equivalent(None, "18") is False
    assert is_equivalent(None, "B") is False


def test_garbage_prediction_is_unequal_without_raising():
    assert is_equivalent(r"\frac{{{", "1/2") is False
    assert is_equivalent("}}\\boxed{", "x") is False
    assert is_equivalent("1" * 5000, "1") is False


def test_is_equivalent_works_outside_the_main_thread():
    results = []

    def check():
        results.append(is_equivalent(r"\frac{\sqrt{8}}{2}", r"\sqrt{2}"))

    worker = threading.Thread(target=check)
    worker.start()
    worker.join(timeout=60)
    assert results == [True]


# --- normalize_answer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r" $18.00$ ", "18"),
        ("18.500", "18.5"),
        (r"\$1,234", "1234"),
        (r"\left( 3, \dfrac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"\text{(B)}", "(B)"),
        (r"45^\circ", "45"),
        (r"12\%.", "12"),
        (r"\frac12", r"\frac{1}{2}"),
        (r"\frac{270}7", r"\frac{270}{7}"),
        (r"11\sqrt2", r"11\sqrt{2}"),
        ("(1,000)", "(1,000)"),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
        (r"\leftarrow", r"\leftarrow"),
    ],
)
def test_normalize_answer_canonical_forms(raw, expected):
    assert normalize_answer(raw) == expected


# --- MATH-500 gold answers --------------------------------------------------------------------


def test_every_math500_gold_equals_itself_when_boxed():
    rows = _rows(MATH500)
    assert len(rows) == 500
    failures = [
        row["answer"] for row in rows if not is_equivalent(extract_answer(_boxed_in_text(row["answer"])), row["answer"])
    ]
    assert failures == []


def test_every_math500_gold_is_extracted_verbatim_from_its_box():
    rows = _rows(MATH500)
    mismatched = [
        row["answer"] for row in rows if extract_answer(_boxed_in_text(row["answer"])) != row["answer"].strip()
    ]
    assert mismatched == []


def test_math_verify_path_alone_accepts_every_math500_gold():
    # The string fallback already accepts these; this guards the math_verify wrapping (e.g. "\$36").
    from glimp_cli.checker import _math_verify_equal

    rows = _rows(MATH500)
    golds = [row["answer"] for row in rows]
    assert [gold for gold in golds if not _math_verify_equal(gold, gold)] == []
