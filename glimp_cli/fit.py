"""Will a pair fit: a model's memory (file, KV cache at its n_ctx) from its GGUF metadata, and a pair's against
the free memory. Pure: metadata and numbers in, sizes, verdicts and messages out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from glimp_cli.errors import ModelFileError
from glimp_cli.gguf_header import SkippedArray

# The cache types llama.cpp's --cache-type-k / --cache-type-v accept: name -> (bytes per block, elements per block)
KV_CACHE_TYPES: dict[str, tuple[int, int]] = {
    "f32": (4, 1),
    "f16": (2, 1),
    "bf16": (2, 1),
    "q8_0": (34, 32),
    "q4_0": (18, 32),
    "q4_1": (20, 32),
    "iq4_nl": (18, 32),
    "q5_0": (22, 32),
    "q5_1": (24, 32),
}
DEFAULT_KV_CACHE_TYPE = "f16"
CONTEXT_PAD = 256  # llama.cpp rounds n_ctx up to a multiple of this; the cache holds that many cells
# llama.cpp's compute buffers, per model, are sized for the largest of a batch's logits (n_batch x vocabulary
# floats) and, without flash attention, its attention scores (n_batch x n_ctx x heads floats), plus activations:
# this allowance covers those (measured on CPU: SmolLM2 99 MiB at n_ctx 4096, 326 MiB at 16384; Gemma 3 515 MiB).
COMPUTE_ALLOWANCE_BYTES = 128 * 2**20
FLOAT_BYTES = 4  # logits and attention scores are f32
FITS, DOES_NOT_FIT, UNKNOWN = "fits", "does not fit", "unknown"


def is_quantized(cache_type: str) -> bool:
    return KV_CACHE_TYPES[cache_type][1] > 1


@dataclass(frozen=True)
class ModelShape:
    """What sizes a model's KV cache and compute buffers: heads per layer, head sizes, vocabulary."""

    architecture: str
    kv_heads: tuple[int, ...]  # one per layer (0 for a layer without attention)
    heads: tuple[int, ...]  # query heads, one per layer
    key_length: int
    value_length: int
    vocab_size: int


def model_shape(metadata: Mapping[str, object], *, source: str) -> ModelShape:
    """The shape from GGUF metadata ({arch}.block_count, .attention.head_count_kv, ...).

    Args:
        source: the file, named in the error when a key is missing.
    """
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{source}: no general.architecture in the GGUF metadata")

    def number(key: str, default: int | None = None) -> int:
        value = metadata.get(f"{arch}.{key}", default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelFileError(f"{source}: no {arch}.{key} in the GGUF metadata (needed for the KV cache size)")
        return value

    def per_layer(key: str, default: object, n_layers: int) -> tuple[int, ...]:
        value = metadata.get(f"{arch}.{key}", default)
        if isinstance(value, tuple) and len(value) == n_layers and all(isinstance(v, int) for v in value):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,) * n_layers
        raise ModelFileError(f"{source}: {arch}.{key} is {value!r}, expected a count or one count per layer")

    n_layers = number("block_count")
    heads = per_layer("attention.head_count", None, n_layers)
    kv_heads = per_layer("attention.head_count_kv", heads, n_layers)
    max_heads = max(heads, default=0)
    default_head = number("embedding_length") // max_heads if max_heads else 0
    tokens = metadata.get("tokenizer.ggml.tokens")
    return ModelShape(
        architecture=arch,
        kv_heads=kv_heads,
        heads=heads,
        key_length=number("attention.key_length", default_head),
        value_length=number("attention.value_length", default_head),
        vocab_size=number("vocab_size", tokens.count if isinstance(tokens, SkippedArray) else len(tokens or ())),
    )


def padded_context(n_ctx: int) -> int:
    return -(-n_ctx // CONTEXT_PAD) * CONTEXT_PAD


def kv_cache_bytes(shape: ModelShape, *, n_ctx: int, type_k: str, type_v: str) -> int:
    """Bytes of the KV cache at n_ctx: for each layer, n_ctx cells of KV heads x head size keys and values."""
    cells = padded_context(n_ctx)
    k_bytes, k_block = KV_CACHE_TYPES[type_k]
    v_bytes, v_block = KV_CACHE_TYPES[type_v]
    total = 0
    for kv_heads in shape.kv_heads:
        total += cells * kv_heads * shape.key_length * k_bytes // k_block
        total += cells * kv_heads * shape.value_length * v_bytes // v_block
    return total


def compute_bytes(shape: ModelShape, *, n_ctx: int, n_batch: int, flash_attn: bool) -> int:
    """The compute buffers: a batch's logits or (without flash attention) its attention scores, whichever is
    larger, plus COMPUTE_ALLOWANCE_BYTES."""
    logits = n_batch * shape.vocab_size * FLOAT_BYTES
    scores = 0 if flash_attn else padded_context(n_ctx) * n_batch * max(shape.heads, default=0) * FLOAT_BYTES
    return max(logits, scores) + COMPUTE_ALLOWANCE_BYTES


@dataclass(frozen=True)
class ModelEstimate:
    """What one loaded model needs (bytes)."""

    name: str
    file_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    n_ctx: int
    type_k: str
    type_v: str

    @property
    def total_bytes(self) -> int:
        return self.file_bytes + self.kv_cache_bytes + self.compute_bytes


def estimate_model(
    *,
    name: str,
    metadata: Mapping[str, object],
    file_bytes: int,
    n_ctx: int,
    n_batch: int,
    type_k: str,
    type_v: str,
    flash_attn: bool,
    source: str,
) -> ModelEstimate:
    shape = model_shape(metadata, source=source)
    return ModelEstimate(
        name=name,
        file_bytes=file_bytes,
        kv_cache_bytes=kv_cache_bytes(shape, n_ctx=n_ctx, type_k=type_k, type_v=type_v),
        compute_bytes=compute_bytes(shape, n_ctx=n_ctx, n_batch=n_batch, flash_attn=flash_attn),
        n_ctx=n_ctx,
        type_k=type_k,
        type_v=type_v,
    )


@dataclass(frozen=True)
class FreeMemory:
    """The memory a pair is compared with: free GPU memory, or available RAM for a CPU build."""

    kind: str | None  # "GPU" | "RAM" | None (not known)
    free_bytes: int | None
    total_bytes: int | None
    note: str  # how it was found, or why it is unknown


@dataclass(frozen=True)
class PairFit:
    needed_bytes: int | None  # None: a model's estimate is missing
    free_bytes: int | None
    verdict: str  # FITS | DOES_NOT_FIT | UNKNOWN


def pair_fit(estimates: list[ModelEstimate | None], memory: FreeMemory) -> PairFit:
    """The pair's total (files + KV caches + compute allowances) against the free memory."""
    needed = None if any(e is None for e in estimates) else sum(e.total_bytes for e in estimates)
    if needed is None or memory.free_bytes is None:
        return PairFit(needed, memory.free_bytes, UNKNOWN)
    return PairFit(needed, memory.free_bytes, FITS if needed <= memory.free_bytes else DOES_NOT_FIT)


def format_bytes(count: int) -> str:
    """'90 MiB' below 1 GiB, else '18.5 GiB'."""
    if count < 2**30:
        return f"{count / 2**20:.0f} MiB"
    return f"{count / 2**30:.1f} GiB"


def describe_estimate(estimate: ModelEstimate) -> str:
    """'0.1 GiB file + 90 MiB KV cache (n_ctx 4096, f16/f16) + 0.5 GiB compute = ...'"""
    return (
        f"{format_bytes(estimate.file_bytes)} file + {format_bytes(estimate.kv_cache_bytes)} KV cache "
        f"(n_ctx {estimate.n_ctx}, K {estimate.type_k}, V {estimate.type_v}) + "
        f"{format_bytes(estimate.compute_bytes)} compute buffers = {format_bytes(estimate.total_bytes)}"
    )


def context_failure_message(
    *, model: str, estimate: ModelEstimate | None, gpu_offload: bool, flash_attn: bool, reason: str
) -> str:
    """One line for a llama.cpp context that could not be created (almost always: not enough memory).

    Args:
        reason: llama.cpp's words (e.g. "Failed to create llama_context").
    """
    needs = f"it needs about {describe_estimate(estimate)}" if estimate else "its size could not be estimated"
    fixes = ["lower n_ctx"]
    if estimate is None or not (is_quantized(estimate.type_k) and is_quantized(estimate.type_v)):
        fixes.append("set type_k and type_v to q8_0" + ("" if flash_attn else " with flash_attn: true"))
    if gpu_offload:
        fixes.append("lower n_gpu_layers")
    return (
        f"model '{model}': llama.cpp could not create its context ({reason}), most likely for lack of memory: "
        f"{needs}; in models.yaml, {_or(fixes)}"
    )


def model_failure_message(*, model: str, path: str, file_bytes: int | None, gpu_offload: bool, reason: str) -> str:
    """One line for a model file llama.cpp could not load: a damaged or unsupported file, or too little memory."""
    size = f" ({format_bytes(file_bytes)})" if file_bytes is not None else ""
    memory = "lower n_gpu_layers in models.yaml" if gpu_offload else "free some RAM"
    return (
        f"model '{model}': llama.cpp cannot load {path}{size}: {reason}; "
        f"the file may be damaged or of an architecture this llama.cpp does not know, or memory is short ({memory})"
    )


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"
