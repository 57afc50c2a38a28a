"""`hf:` model files: read from the Hugging Face cache, downloaded into it only by `glimp pull`; errors in one line."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from glimp_cli.config import ModelSpec
from glimp_cli.errors import DownloadError, ModelFileError

# Exception class names of the HTTP clients huggingface_hub has used (requests, httpx, httpx2): matched by name, as
# glimp imports none of them.
CONNECT_ERRORS = {"ConnectError", "ConnectTimeout", "ConnectionError", "ProxyError", "SSLError"}
TIMEOUT_ERRORS = {"TimeoutException", "Timeout", "ReadTimeout"}
CUT_OFF_ERRORS = {"RemoteProtocolError", "ReadError", "ChunkedEncodingError", "IncompleteRead"}


def hf_file(spec: ModelSpec, *, download: bool) -> Path:
    """The cached file of an `hf: owner/repo/file.gguf` model; with `download`, fetched from the hub first if missing.

    huggingface_hub writes a download to a `.incomplete` file beside the blobs and links it into the snapshot only
    when complete: an interrupted download leaves nothing that a later lookup takes for the model.
    """
    repo, _, filename = spec.hf.rpartition("/")
    if not repo or "/" not in repo or not filename:
        raise ModelFileError(f"model '{spec.name}': hf reference must be 'owner/repo/file.gguf', got '{spec.hf}'")
    try:
        import huggingface_hub
    except ImportError as exc:
        raise ModelFileError(f"model '{spec.name}': hf models need huggingface_hub (pip install 'glimp[hf]')") from exc
    if not download:
        return _cached_file(spec, huggingface_hub, repo, filename)
    try:
        return Path(huggingface_hub.hf_hub_download(repo, filename))
    except Exception as exc:  # the hub client raises many types: each becomes one line
        reason = _reason(exc, repo, filename)
        raise DownloadError(f"model '{spec.name}': cannot download hf:{spec.hf}: {reason}") from exc


def _cached_file(spec: ModelSpec, huggingface_hub, repo: str, filename: str) -> Path:
    """The file from the cache alone: hf_hub_download(local_files_only=True) would still ask the hub for its
    telemetry registry (huggingface_hub 2.x), so the cache is read directly."""
    try:
        cached = huggingface_hub.try_to_load_from_cache(repo, filename)
    except ValueError as exc:  # HFValidationError: a repository name the hub does not accept
        raise ModelFileError(f"model '{spec.name}': hf reference '{spec.hf}' is not valid: {_first_line(exc)}") from exc
    if isinstance(cached, str):  # else None, or a marker that the hub said the file does not exist
        return Path(cached)
    raise ModelFileError(f"model '{spec.name}': not downloaded: {pull_command(spec.name)}")


def pull_command(name: str) -> str:
    """The command that downloads model `name`, quoted for a shell."""
    return f"glimp pull {shlex.quote(name)}"


def _reason(exc: Exception, repo: str, filename: str) -> str:
    """What went wrong, from the outermost exception of the chain that says something the user can act on."""
    where = _endpoint()
    for error in _chain(exc):
        kinds = {kind.__name__ for kind in type(error).__mro__}
        if "GatedRepoError" in kinds:
            return f"repository '{repo}' on {where} is gated: accept its terms on its page, then set HF_TOKEN"
        if "RepositoryNotFoundError" in kinds:
            return f"repository '{repo}' not found on {where} (a private repository needs HF_TOKEN)"
        if "RevisionNotFoundError" in kinds:
            return f"revision 'main' not found in repository '{repo}' on {where}"
        if "EntryNotFoundError" in kinds and "LocalEntryNotFoundError" not in kinds:
            return f"file '{filename}' not found in repository '{repo}' on {where}"
        if "OfflineModeIsEnabled" in kinds:
            return "HF_HUB_OFFLINE is set: unset it to download"
        if kinds & CONNECT_ERRORS:
            return f"cannot connect to {where}"
        if kinds & TIMEOUT_ERRORS:
            return f"{where} did not answer in time"
        if kinds & CUT_OFF_ERRORS:
            return f"the connection to {where} was cut off during the download; run the command again"
        status = getattr(getattr(error, "response", None), "status_code", None)
        if "HfHubHTTPError" in kinds and status is not None:
            answer = f"{where} answered HTTP {status} ({_reason_phrase(error.response)})"
            if status in (401, 403):
                return f"{answer}: check HF_TOKEN"
            if status >= 500:
                return f"{answer}: try again later"
            return f"{answer}: is it a Hugging Face hub?"
        if "FileMetadataError" in kinds:
            return f"{where} does not answer as a Hugging Face hub: {_first_line(error)}"
        if isinstance(error, OSError) and error.filename and error.strerror:
            return f"cannot write {error.filename}: {error.strerror}"
    return _first_line(exc)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, then what caused it, and so on (huggingface_hub wraps a network error in a cache-miss error)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _endpoint() -> str:
    """The hub's address as huggingface_hub uses it (read from HF_ENDPOINT when it was imported)."""
    from huggingface_hub import constants

    return constants.ENDPOINT + (" (HF_ENDPOINT)" if os.environ.get("HF_ENDPOINT") else "")


def _reason_phrase(response) -> str:
    return getattr(response, "reason_phrase", None) or getattr(response, "reason", None) or "no reason given"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
