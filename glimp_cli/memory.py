"""The I/O of "will it fit": a configured model's estimate from its file's GGUF header, and the memory a pair can
use (free GPU memory from nvidia-smi, or available RAM for a CPU build of llama.cpp). The arithmetic is in fit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from glimp_cli.config import ModelSpec
from glimp_cli.errors import ModelFileError
from glimp_cli.fit import FreeMemory, ModelEstimate, estimate_model
from glimp_cli.gguf_header import read_gguf_header
from glimp_cli.sources import local_model_file

NVIDIA_SMI_QUERY = ["--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits"]
NVIDIA_SMI_TIMEOUT_S = 10
MEMINFO = Path("/proc/meminfo")


def estimate_spec(spec: ModelSpec) -> ModelEstimate:
    """What a configured model needs, from its local file (never downloads or assembles); ModelFileError if the
    file is not here or its header lacks what the estimate needs."""
    return estimate_file(spec, local_model_file(spec))


def estimate_file(spec: ModelSpec, path: Path) -> ModelEstimate:
    """What a model needs with `spec`'s settings, from the GGUF file at `path`."""
    try:
        file_bytes = path.stat().st_size
    except OSError as exc:
        raise ModelFileError(f"model '{spec.name}': cannot read {path}: {exc.strerror}") from exc
    return estimate_model(
        name=spec.name,
        metadata=read_gguf_header(path),
        file_bytes=file_bytes,
        n_ctx=spec.n_ctx,
        n_batch=spec.n_batch,
        type_k=spec.type_k,
        type_v=spec.type_v,
        flash_attn=bool(spec.flash_attn),
        source=str(path),
    )


def free_memory(*, gpu_offload: bool) -> FreeMemory:
    """Free GPU memory when llama.cpp offloads to a GPU, else available RAM."""
    if not gpu_offload:
        available, total = _system_ram()
        if available is None:
            return FreeMemory(None, None, None, "available RAM (CPU build of llama.cpp): unknown")
        return FreeMemory("RAM", available, total, "available RAM (CPU build of llama.cpp)")
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return FreeMemory(None, None, None, "GPU memory: unknown (no GPU visible)")
    try:
        done = subprocess.run(
            [executable, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return FreeMemory(None, None, None, f"GPU memory: unknown (nvidia-smi failed: {type(exc).__name__})")
    gpus = parse_nvidia_smi(done.stdout) if done.returncode == 0 else None
    if not gpus:
        return FreeMemory(None, None, None, f"GPU memory: unknown (nvidia-smi exited with {done.returncode})")
    free = sum(free for free, _ in gpus)
    total = sum(total for _, total in gpus)
    count = f"{len(gpus)} GPUs" if len(gpus) > 1 else "1 GPU"
    return FreeMemory("GPU", free, total, f"free GPU memory ({count}, nvidia-smi)")


def parse_nvidia_smi(text: str) -> list[tuple[int, int]] | None:
    """(free, total) bytes per GPU from `nvidia-smi --query-gpu=memory.free,memory.total` CSV in MiB, or None."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not all(field.isdigit() for field in fields):
            return None  # "[N/A]" or an error text
        gpus.append((int(fields[0]) * 2**20, int(fields[1]) * 2**20))
    return gpus or None


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """(MemAvailable, MemTotal) bytes from /proc/meminfo's text (values in kB)."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    return values.get("MemAvailable"), values.get("MemTotal")


def _system_ram() -> tuple[int | None, int | None]:
    try:
        return parse_meminfo(MEMINFO.read_text())
    except OSError:
        return None, None  # not Linux
