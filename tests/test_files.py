"""Tests for glimp_cli.files: a write that fails names the path and the cause and leaves no temporary file."""

from __future__ import annotations

import errno
import os

import pytest

from glimp_cli.errors import WriteError
from glimp_cli.files import append_text, write_atomic


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_write_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    write_atomic(path, "new ünïcode\n")
    assert path.read_text(encoding="utf-8") == "new ünïcode\n"
    assert os.listdir(tmp_path) == ["summary.json"]


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_write_atomic_on_a_full_disk_keeps_the_old_file_and_no_temporary_one(tmp_path, monkeypatch, failing):
    path = tmp_path / "summary.json"
    path.write_text("old")
    monkeypatch.setattr(os, failing, _no_space)
    with pytest.raises(WriteError) as caught:
        write_atomic(path, "new")
    monkeypatch.undo()
    assert str(caught.value) == f"cannot write {path}: No space left on device"
    assert caught.value.exit_code == 1
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_write_atomic_into_a_directory_that_cannot_be_written(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(WriteError, match=r"^cannot write .*run\.json: Read-only file system$"):
        write_atomic(tmp_path / "run.json", "{}")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_write_atomic_interrupted_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    path = tmp_path / "summary.md"
    path.write_text("old")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.md"]


def test_write_atomic_in_a_missing_directory_names_the_cause(tmp_path):
    with pytest.raises(WriteError, match=r"^cannot write .*nowhere/x\.json: No such file or directory$"):
        write_atomic(tmp_path / "nowhere" / "x.json", "{}")


def test_append_text_adds_to_the_end(tmp_path):
    path = tmp_path / "results.jsonl"
    append_text(path, "a\n")
    append_text(path, "b\n")
    assert path.read_text() == "a\nb\n"


def test_a_failed_append_leaves_no_half_written_line(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    path.write_text("a\n")
    real_write = os.write

    def half_then_full(fd, data):  # the disk fills up part-way through the line
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(WriteError) as caught:
        append_text(path, '{"id": 1, "mode": "glimp"}\n')
    monkeypatch.undo()
    assert str(caught.value) == f"cannot write {path}: No space left on device"
    assert path.read_text() == "a\n"
