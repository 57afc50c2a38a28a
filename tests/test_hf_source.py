"""`hf:` models: resolved through huggingface_hub only when asked to download (tested with local files)."""

from __future__ import annotations

import sys
import types

import pytest

from glimp_cli.config import ModelSpec
from glimp_cli.errors import ModelFileError
from glimp_cli.sources import resolve_model_path


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A stand-in huggingface_hub whose cache holds one local GGUF file."""
    cached = tmp_path / "cache" / "model.gguf"
    cached.parent.mkdir()
    cached.write_bytes(b"GGUF" + b"\0" * 16)
    calls = []

    def hf_hub_download(repo_id, filename, *, local_files_only):
        calls.append((repo_id, filename, local_files_only))
        if filename != "model.gguf":
            raise FileNotFoundError(filename)
        return str(cached)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    return cached, calls


def test_hf_model_in_the_local_cache_resolves_without_downloading(fake_hub):
    cached, calls = fake_hub
    spec = ModelSpec(name="m", hf="owner/repo/model.gguf")
    assert resolve_model_path(spec) == cached
    assert calls == [("owner/repo", "model.gguf", True)]


def test_pull_is_the_only_path_that_may_download(fake_hub):
    cached, calls = fake_hub
    assert resolve_model_path(ModelSpec(name="m", hf="owner/repo/model.gguf"), download=True) == cached
    assert calls == [("owner/repo", "model.gguf", False)]


def test_hf_model_missing_from_the_cache_says_how_to_get_it(fake_hub):
    with pytest.raises(ModelFileError) as raised:
        resolve_model_path(ModelSpec(name="m", hf="owner/repo/other.gguf"))
    assert str(raised.value) == (
        "model 'm': cannot get owner/repo/other.gguf: FileNotFoundError "
        "(not in the local cache; run 'glimp pull NAME' to download it)"
    )


def test_hf_model_without_huggingface_hub_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(ModelFileError) as raised:
        resolve_model_path(ModelSpec(name="m", hf="owner/repo/model.gguf"))
    assert "pip install 'glimp[hf]'" in str(raised.value)
