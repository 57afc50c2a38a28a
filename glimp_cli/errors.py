"""User-facing errors: the CLI prints one line and exits with `exit_code`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GlimpError(Exception):
    """An error the user can fix; printed as one line, no traceback."""

    exit_code = 2


class ConfigError(GlimpError):
    """models.yaml (or a command-line override) is wrong."""


class ModelFileError(GlimpError):
    """A model file is missing, unreadable or not GGUF."""


class DataError(GlimpError):
    """A benchmark data file is wrong."""


class ProblemError(GlimpError):
    """One problem cannot be run (its input, not the run, is at fault): a benchmark records it and goes on."""


class ContextError(ProblemError):
    """The problem does not fit a model's context window."""


class RunError(GlimpError):
    """Something failed at run time (not the user's input)."""

    exit_code = 1


class MemoryShortError(RunError):
    """llama.cpp could not create a model's context (its KV cache and buffers): most often too little memory."""


class DownloadError(RunError):
    """A download from the Hugging Face hub failed (not found, no connection, cut off); names the model and the ref."""


class WriteError(RunError):
    """A file could not be written (full disk, read-only or missing directory); names the path and the cause."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def lone_surrogate(text: str) -> str | None:
    """'\\udxxx at character N' for the first lone surrogate in `text` (what invalid UTF-8 on the command line,
    or an unpaired \\ud800-\\udfff escape in JSON or YAML, becomes; it cannot be written as UTF-8), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"\\u{ord(text[exc.start]):04x} at character {exc.start + 1}"
    return None
