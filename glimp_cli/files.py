"""Writing files so that a failure (full disk, read-only directory) leaves no half-written file behind."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from glimp_cli.errors import WriteError


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` with `text` whole, or leave it as it was and raise WriteError.

    The text goes to a temporary file in the same directory, is synced, then renamed over `path`;
    a Ctrl-C or a full disk mid-write leaves the old file and no temporary one.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")  # unique: two writers never share it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 less the umask, as open() gives
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        try:
            _write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append `text` to `path` (created if missing) and sync it, or leave the file as it was and raise WriteError."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
        except BaseException as exc:
            _cut_back(fd, size)  # a half-written line must not sit before the next append
            if isinstance(exc, OSError):
                raise write_error(path, exc) from exc
            raise
    finally:
        os.close(fd)


def write_error(path: Path, exc: OSError) -> WriteError:
    """'cannot write PATH: CAUSE' for an OSError met while writing `path`."""
    return WriteError(f"cannot write {path}: {exc.strerror or exc}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _cut_back(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass  # then the next open drops the incomplete last line (store.py repairs it)
