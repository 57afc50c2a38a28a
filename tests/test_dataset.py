"""Tests for glimp_cli.dataset: reading benchmark problems from JSONL, and its error messages."""

import hashlib
import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA

from glimp_cli.dataset import Problem, file_sha256, load_problems
from glimp_cli.errors import ConfigError, DataError


def _jsonl(tmp_path: Path, *records, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_problem_and_answer_keys_are_tried_in_order(tmp_path):
    path = _jsonl(
        tmp_path,
        {"problem": "p1", "question": "ignored", "answer": "1", "gold": "ignored"},
        {"question": "p2", "gold": "2"},
        {"prompt": "p3", "solution": "3"},
    )
    assert load_problems(path) == [
        Problem(id=1, text="p1", gold="1", line=1),
        Problem(id=2, text="p2", gold="2", line=2),
        Problem(id=3, text="p3", gold="3", line=3),
    ]


def test_explicit_keys_replace_the_defaults(tmp_path):
    path = _jsonl(tmp_path, {"problem": "not this", "q": "this one", "answer": "no", "ref": 7})
    [problem] = load_problems(path, problem_key="q", answer_key="ref")
    assert (problem.text, problem.gold) == ("this one", "7")


def test_gold_takes_the_part_after_hashes_and_the_boxed_result_of_a_solution(tmp_path):
    path = _jsonl(
        tmp_path,
        {"question": "q", "answer": "She has 3 + 4 = 7 apples.\n#### 7"},
        {"problem": "q", "solution": "So the area is $\\boxed{\\frac{1}{2}}$."},
        {"problem": "q", "answer": 42},
    )
    assert [p.gold for p in load_problems(path)] == ["7", "\\frac{1}{2}", "42"]


def test_ids_come_from_the_record_else_the_line_number(tmp_path):
    path = _jsonl(tmp_path, {"id": "a", "problem": "q", "answer": "1"}, "", {"problem": "q", "answer": "2"})
    assert [(p.id, p.line) for p in load_problems(path)] == [("a", 1), (3, 3)]


def test_offset_and_limit_select_a_slice(tmp_path):
    path = _jsonl(tmp_path, *({"id": i, "problem": f"q{i}", "answer": str(i)} for i in range(5)))
    assert [p.id for p in load_problems(path, offset=1, limit=2)] == [1, 2]
    assert [p.id for p in load_problems(path, offset=3)] == [3, 4]
    assert [p.id for p in load_problems(path, limit=10)] == [0, 1, 2, 3, 4]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.jsonl"):
        load_problems(tmp_path / "nope.jsonl")


def test_a_line_that_is_not_json_is_named_with_its_number(tmp_path):
    path = _jsonl(tmp_path, {"problem": "q", "answer": "1"}, "{not json")
    with pytest.raises(DataError, match=r"data\.jsonl:2: not JSON: "):
        load_problems(path)


def test_a_line_that_is_not_an_object_is_named(tmp_path):
    path = _jsonl(tmp_path, "[1, 2]")
    with pytest.raises(DataError, match=r"data\.jsonl:1: expected a JSON object, got list"):
        load_problems(path)


def test_a_record_without_a_problem_names_its_line_and_keys(tmp_path):
    path = _jsonl(tmp_path, {"problem": "q", "answer": "1"}, {"text": "q", "answer": "2", "id": 9})
    with pytest.raises(DataError) as caught:
        load_problems(path)
    assert str(caught.value) == (
        f"{path}:2: no problem text: expected 'problem' or 'question' or 'prompt'; "
        "the record has 'text', 'answer', 'id' (set --problem-key)"
    )


def test_a_record_without_an_answer_names_its_line_and_keys(tmp_path):
    path = _jsonl(tmp_path, {"problem": "q", "result": "1"})
    with pytest.raises(DataError) as caught:
        load_problems(path)
    assert str(caught.value) == (
        f"{path}:1: no answer: expected 'answer' or 'gold' or 'solution'; "
        "the record has 'problem', 'result' (set --answer-key)"
    )


def test_an_explicit_key_that_is_absent_is_named(tmp_path):
    path = _jsonl(tmp_path, {"problem": "q", "answer": "1"})
    with pytest.raises(DataError, match=r":1: no problem text: expected 'q'; the record has 'problem', 'answer'"):
        load_problems(path, problem_key="q")


def test_an_empty_file_is_refused(tmp_path):
    path = _jsonl(tmp_path, "", "  ")
    with pytest.raises(DataError, match=r"data\.jsonl: no problems \(the file is empty\)"):
        load_problems(path)


def test_an_offset_past_the_end_is_refused(tmp_path):
    path = _jsonl(tmp_path, {"problem": "q", "answer": "1"})
    with pytest.raises(DataError, match=r"--offset 1 leaves no problems \(the file has 1\)"):
        load_problems(path, offset=1)


@pytest.mark.parametrize(
    ("offset", "limit", "message"), [(-1, None, "--offset must be 0 or more"), (0, 0, "--limit must be positive")]
)
def test_bad_offset_or_limit_is_a_config_error(tmp_path, offset, limit, message):
    path = _jsonl(tmp_path, {"problem": "q", "answer": "1"})
    with pytest.raises(ConfigError, match=message):
        load_problems(path, offset=offset, limit=limit)


def test_duplicate_ids_are_refused(tmp_path):
    path = _jsonl(tmp_path, {"id": 5, "problem": "q", "answer": "1"}, {"id": 5, "problem": "r", "answer": "2"})
    with pytest.raises(DataError, match=r":2: duplicate id 5 \(first on line 1\)"):
        load_problems(path)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"problem": "", "answer": "1"}, "the problem text must be a non-empty string"),
        ({"problem": "q", "answer": ["1"]}, "the answer must be a string or a finite number"),
        ({"problem": "q", "answer": "  "}, "the answer is empty"),
        ({"problem": "q", "answer": "1", "id": 1.5}, "'id' must be a string or an integer"),
    ],
)
def test_bad_field_values_are_named(tmp_path, record, message):
    with pytest.raises(DataError, match=message):
        load_problems(_jsonl(tmp_path, record))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"problem": "q\\ud800", "answer": "1"}',
            r":2: the problem text holds a lone surrogate, \\ud800 at character 2, which is not text",
        ),
        (
            '{"problem": "q", "answer": "\\udcff1"}',
            r":2: the answer holds a lone surrogate, \\udcff at character 1, which is not text",
        ),
        (
            '{"problem": "q", "answer": "1", "id": "a\\udfff"}',
            r":2: 'id' holds a lone surrogate, \\udfff at character 2",
        ),
    ],
    ids=["problem", "answer", "id"],
)
def test_a_lone_surrogate_escape_is_refused_with_its_line(tmp_path, line, message):
    # json.loads accepts an unpaired \ud800-\udfff escape; the text could then not be tokenized or stored.
    path = _jsonl(tmp_path, {"problem": "fine", "answer": "1"}, line)
    with pytest.raises(DataError, match=message):
        load_problems(path)


def test_a_surrogate_pair_escape_is_text(tmp_path):
    [problem] = load_problems(_jsonl(tmp_path, '{"problem": "\\ud83d\\ude00 smile", "answer": "1"}'))
    assert problem.text == "\U0001f600 smile"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_answer_is_refused(tmp_path, value):
    with pytest.raises(
        DataError, match=f":1: the answer must be a string or a finite number, got {value.lower().replace('inity', '')}"
    ):
        load_problems(_jsonl(tmp_path, f'{{"problem": "q", "answer": {value}}}'))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[" * 100_000, r":1: not JSON: nested too deeply$"),
        (
            '{"problem": "q", "answer": ' + "1" * 5000 + "}",
            r":1: not JSON: Exceeds the limit \(4300 digits\) for integer string conversion$",
        ),
    ],
    ids=["deep-nesting", "huge-integer"],
)
def test_json_that_python_cannot_hold_is_a_data_error(tmp_path, line, message):
    with pytest.raises(DataError, match=message):
        load_problems(_jsonl(tmp_path, line))


def test_lines_end_at_newlines_only(tmp_path):
    # U+2028 and U+0085 may stand raw inside a JSON string: they do not end a record (str.splitlines() ends one).
    path = _jsonl(tmp_path, '{"problem": "a\u2028b\x85c", "answer": "1"}', {"problem": "q", "answer": "2"})
    assert [(p.text, p.line) for p in load_problems(path)] == [("a\u2028b\x85c", 1), ("q", 2)]


def test_windows_line_endings_are_read(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"problem": "q", "answer": "1"}\r\n{"problem": "r", "answer": "2"}\r\n')
    assert [(p.text, p.gold, p.line) for p in load_problems(path)] == [("q", "1", 1), ("r", "2", 2)]


def test_file_sha256_identifies_the_bytes(tmp_path):
    path = _jsonl(tmp_path, {"problem": "q", "answer": "1"})
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) != file_sha256(_jsonl(tmp_path, {"problem": "q", "answer": "2"}, name="other.jsonl"))


@pytest.mark.parametrize("name", ["gsm8k.jsonl", "math500.jsonl", "aime24.jsonl"])
def test_shared_benchmarks_load(name):
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"benchmark data not found at {path}")
    problems = load_problems(path)
    assert len(problems) == sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    assert all(p.text and p.gold for p in problems)
    if name == "gsm8k.jsonl":
        assert (problems[0].id, problems[0].gold) == (0, "18")
