"""Will a pair fit: the GGUF header reader, the KV cache and compute sizes, the verdict, the memory probes, and the
one-line error for a context llama.cpp could not create."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from glimp_cli import fit
from glimp_cli.errors import ModelFileError
from glimp_cli.fit import FreeMemory, ModelEstimate, kv_cache_bytes, model_shape
from glimp_cli.gguf_header import SkippedArray, read_gguf_header
from glimp_cli.memory import estimate_spec, free_memory, parse_meminfo, parse_nvidia_smi

MiB, GiB = 2**20, 2**30


# --- the GGUF header reader -----------------------------------------------------------------------


def _write_gguf(path: Path, values: dict, *, big_endian: bool = False) -> Path:
    """A GGUF file with these key/values and no tensors, written by llama.cpp's own gguf library."""
    gguf = pytest.importorskip("gguf")
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(path, "toy", endianess=endian)  # it writes general.architecture = "toy"
    for key, (kind, value) in values.items():
        getattr(writer, f"add_{kind}")(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


TOY = {
    "toy.block_count": ("uint32", 3),
    "toy.context_length": ("uint64", 2**40),
    "toy.rope.freq_base": ("float32", 0.5),
    "toy.scale": ("float64", -1.25),
    "toy.offset": ("int32", -7),
    "toy.small": ("int8", -3),
    "toy.flag": ("bool", True),
    "toy.attention.head_count_kv": ("array", [2, 0, 4]),
    "general.name": ("string", "café"),
    "tokenizer.ggml.tokens": ("array", ["a", "bb", "", "dddd"]),
    "tokenizer.ggml.scores": ("array", [0.5] * 5),
}
TOY_READ = {
    "general.architecture": "toy",
    "toy.block_count": 3,
    "toy.context_length": 2**40,
    "toy.rope.freq_base": 0.5,
    "toy.scale": -1.25,
    "toy.offset": -7,
    "toy.small": -3,
    "toy.flag": True,
    "toy.attention.head_count_kv": (2, 0, 4),
    "general.name": "café",
    "tokenizer.ggml.tokens": SkippedArray(4),
    "tokenizer.ggml.scores": (0.5,) * 5,
}


@pytest.mark.parametrize("big_endian", [False, True], ids=["little-endian", "big-endian"])
def test_header_reader_reads_what_the_gguf_library_wrote(tmp_path, big_endian):
    path = _write_gguf(tmp_path / "toy.gguf", TOY, big_endian=big_endian)
    assert read_gguf_header(path) == TOY_READ


def test_header_reader_keeps_the_length_of_a_long_numeric_array_only(tmp_path, monkeypatch):
    monkeypatch.setattr("glimp_cli.gguf_header.MAX_KEPT_ARRAY", 4)
    path = _write_gguf(tmp_path / "toy.gguf", TOY)
    header = read_gguf_header(path)
    assert header["tokenizer.ggml.scores"] == SkippedArray(5)
    assert header["toy.attention.head_count_kv"] == (2, 0, 4)


def test_a_cut_off_header_is_a_model_file_error_naming_the_file(tmp_path):
    whole = _write_gguf(tmp_path / "toy.gguf", TOY).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:100])
    with pytest.raises(ModelFileError) as raised:
        read_gguf_header(cut)
    assert str(raised.value) == f"{cut}: the GGUF header is cut off (file of 100 bytes)"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not a GGUF file (the file is empty)"),
        (b"GGML" + bytes(20), "not a GGUF file (starts with b'GGML')"),
        (b"GGUF" + bytes(60), "GGUF version 0 is not supported (2 and later are)"),
    ],
    ids=["empty", "other-magic", "version-0"],
)
def test_a_file_that_is_not_gguf_v2_or_later_is_refused(tmp_path, content, problem):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as raised:
        read_gguf_header(path)
    assert str(raised.value) == f"{path}: {problem}"


# --- KV cache and compute sizes ------------------------------------------------------------------------

# From the demo files' headers: SmolLM2-135M (llama) 30 layers, 9 heads, 3 KV heads, embedding 576 (head 64),
# vocabulary 49152; Gemma 3 270M 18 layers, 4 heads, 1 KV head, key/value length 256, vocabulary 262144.
# One cache cell of one layer holds KV heads x head size keys and as many values:
#   smollm2 f16:  30 x 2 x (3 x 64) x 2 bytes = 23040 per cell -> x 4096 = 94,371,840
#   smollm2 q8_0: 30 x 2 x (192 / 32 blocks x 34 bytes = 204) = 12240 per cell -> x 4096 = 50,135,040
#   gemma3 f16:   18 x 2 x (1 x 256) x 2 bytes = 18432 per cell -> x 4096 = 75,497,472
#   gemma3 q8_0:  18 x 2 x (256 / 32 x 34 = 272) = 9792 per cell -> x 4096 = 40,108,032
# (llama.cpp's own log for these loads: 90.00, 47.81, 12.00 + 60.00 and 6.38 + 31.88 MiB.)
DEMO_KV_4096 = {
    ("smollm2-135m", "f16"): 94_371_840,
    ("smollm2-135m", "q8_0"): 50_135_040,
    ("gemma3-270m", "f16"): 75_497_472,
    ("gemma3-270m", "q8_0"): 40_108_032,
}


@pytest.fixture(scope="module")
def demo_headers(demo_config):
    from glimp_cli.sources import resolve_model_path

    demo = demo_config.pair("demo")
    return {name: read_gguf_header(resolve_model_path(demo_config.model(name))) for name in (demo.small, demo.large)}


@pytest.mark.parametrize(("model", "cache_type"), DEMO_KV_4096, ids=[f"{m}-{t}" for m, t in DEMO_KV_4096])
def test_kv_cache_of_the_demo_models_at_4096(demo_headers, model, cache_type):
    shape = model_shape(demo_headers[model], source=model)
    assert kv_cache_bytes(shape, n_ctx=4096, type_k=cache_type, type_v=cache_type) == DEMO_KV_4096[(model, cache_type)]


def test_n_ctx_is_rounded_up_to_256_cells_as_llama_cpp_does(demo_headers):
    shape = model_shape(demo_headers["smollm2-135m"], source="smollm2")
    assert kv_cache_bytes(shape, n_ctx=4097, type_k="f16", type_v="f16") == 23040 * 4352


def test_kv_heads_given_per_layer_and_head_size_from_embedding_and_heads():
    metadata = {
        "general.architecture": "toy",
        "toy.block_count": 3,
        "toy.attention.head_count": 8,
        "toy.attention.head_count_kv": (2, 0, 4),
        "toy.embedding_length": 512,  # head size 64
    }
    shape = model_shape(metadata, source="toy.gguf")
    assert (shape.kv_heads, shape.key_length, shape.value_length) == ((2, 0, 4), 64, 64)
    # n_ctx 300 -> 512 cells; 6 KV heads x 64 = 384 elements per cell for keys and for values
    assert kv_cache_bytes(shape, n_ctx=300, type_k="f16", type_v="f16") == 512 * 384 * 2 * 2
    assert kv_cache_bytes(shape, n_ctx=300, type_k="q4_0", type_v="f16") == 512 * 384 * 18 // 32 + 512 * 384 * 2


def test_a_header_without_the_layer_count_names_the_missing_key():
    with pytest.raises(ModelFileError) as raised:
        model_shape({"general.architecture": "toy", "toy.attention.head_count": 8}, source="toy.gguf")
    assert str(raised.value) == "toy.gguf: no toy.block_count in the GGUF metadata (needed for the KV cache size)"


def test_compute_allowance_is_the_larger_of_logits_and_attention_scores(demo_headers):
    shape = model_shape(demo_headers["smollm2-135m"], source="smollm2")
    logits = 512 * 49152 * 4  # 96 MiB
    scores = 16384 * 512 * 9 * 4  # 288 MiB at n_ctx 16384 without flash attention
    allowance = fit.COMPUTE_ALLOWANCE_BYTES
    assert fit.compute_bytes(shape, n_ctx=16384, n_batch=512, flash_attn=False) == scores + allowance
    assert fit.compute_bytes(shape, n_ctx=16384, n_batch=512, flash_attn=True) == logits + allowance
    assert fit.compute_bytes(shape, n_ctx=4096, n_batch=512, flash_attn=False) == logits + allowance


def test_gemma3_vocabulary_size_comes_from_its_token_list(demo_headers):
    assert model_shape(demo_headers["gemma3-270m"], source="gemma3").vocab_size == 262144


def test_estimate_of_a_configured_model_reads_its_file(demo_config):
    from glimp_cli.sources import resolve_model_path

    spec = dataclasses.replace(demo_config.model("smollm2-135m"), type_k="q8_0", type_v="q8_0", flash_attn=True)
    estimate = estimate_spec(spec)
    assert estimate == ModelEstimate(
        name="smollm2-135m",
        file_bytes=resolve_model_path(spec).stat().st_size,
        kv_cache_bytes=50_135_040,
        compute_bytes=512 * 49152 * 4 + fit.COMPUTE_ALLOWANCE_BYTES,
        n_ctx=4096,
        type_k="q8_0",
        type_v="q8_0",
    )


# --- the verdict ---------------------------------------------------------------------------------------


def _estimate(name: str, *, file: int, kv: int, compute: int = 0) -> ModelEstimate:
    return ModelEstimate(name, file, kv, compute, n_ctx=4096, type_k="f16", type_v="f16")


SMALL = _estimate("small", file=3 * GiB, kv=1 * GiB, compute=GiB // 2)
LARGE = _estimate("large", file=19 * GiB, kv=4 * GiB, compute=GiB // 2)
H100_FREE = FreeMemory("GPU", 28 * GiB, 80 * GiB, "free GPU memory (1 GPU, nvidia-smi)")


def test_a_pair_within_the_free_memory_fits():
    assert fit.pair_fit([SMALL, LARGE], H100_FREE) == fit.PairFit(28 * GiB, 28 * GiB, "fits")


def test_a_pair_over_the_free_memory_does_not_fit():
    memory = dataclasses.replace(H100_FREE, free_bytes=28 * GiB - 1)
    assert fit.pair_fit([SMALL, LARGE], memory) == fit.PairFit(28 * GiB, 28 * GiB - 1, "does not fit")


def test_a_pair_with_a_model_not_downloaded_is_unknown():
    assert fit.pair_fit([SMALL, None], H100_FREE) == fit.PairFit(None, 28 * GiB, "unknown")


def test_a_pair_without_visible_memory_is_unknown():
    memory = FreeMemory(None, None, None, "GPU memory: unknown (no GPU visible)")
    assert fit.pair_fit([SMALL, LARGE], memory) == fit.PairFit(28 * GiB, None, "unknown")


# --- free memory -----------------------------------------------------------------------------------------


def test_nvidia_smi_lines_are_free_and_total_mib_per_gpu():
    assert parse_nvidia_smi("81000, 81559\n 1024 , 2048\n") == [(81000 * MiB, 81559 * MiB), (1024 * MiB, 2048 * MiB)]


@pytest.mark.parametrize("text", ["", "[N/A], [N/A]\n", "No devices were found\n"])
def test_nvidia_smi_output_without_numbers_is_none(text):
    assert parse_nvidia_smi(text) is None


def test_meminfo_gives_available_and_total_bytes():
    text = "MemTotal:       24681216 kB\nMemFree:        1000 kB\nMemAvailable:   20000000 kB\n"
    assert parse_meminfo(text) == (20000000 * 1024, 24681216 * 1024)


def _path_with(tmp_path: Path, monkeypatch, script: str | None) -> None:
    """PATH holding only a fake nvidia-smi (or nothing)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if script is not None:
        tool = bin_dir / "nvidia-smi"
        tool.write_text(f"#!/bin/sh\n{script}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_no_nvidia_smi_means_gpu_memory_unknown(tmp_path, monkeypatch):
    _path_with(tmp_path, monkeypatch, None)
    assert free_memory(gpu_offload=True) == FreeMemory(None, None, None, "GPU memory: unknown (no GPU visible)")


@pytest.mark.skipif(os.name != "posix", reason="a shell script stands in for nvidia-smi")
def test_free_gpu_memory_is_summed_over_the_gpus_nvidia_smi_lists(tmp_path, monkeypatch):
    _path_with(tmp_path, monkeypatch, "echo '1000, 81559'; echo '2000, 81559'")
    assert free_memory(gpu_offload=True) == FreeMemory(
        "GPU", 3000 * MiB, 2 * 81559 * MiB, "free GPU memory (2 GPUs, nvidia-smi)"
    )


@pytest.mark.skipif(os.name != "posix", reason="a shell script stands in for nvidia-smi")
def test_a_failing_nvidia_smi_means_gpu_memory_unknown(tmp_path, monkeypatch):
    _path_with(tmp_path, monkeypatch, "echo 'NVIDIA-SMI has failed'; exit 9")
    assert free_memory(gpu_offload=True) == FreeMemory(
        None, None, None, "GPU memory: unknown (nvidia-smi exited with 9)"
    )


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="Linux's /proc/meminfo")
def test_a_cpu_build_is_compared_with_available_ram():
    memory = free_memory(gpu_offload=False)
    assert (memory.kind, memory.note) == ("RAM", "available RAM (CPU build of llama.cpp)")
    assert 0 < memory.free_bytes <= memory.total_bytes


# --- messages --------------------------------------------------------------------------------------------


def test_format_bytes_uses_mib_below_a_gib():
    assert [fit.format_bytes(n) for n in (94_371_840, GiB - 1, GiB, 19_851_235_328)] == [
        "90 MiB",
        "1024 MiB",
        "1.0 GiB",
        "18.5 GiB",
    ]


def test_context_failure_names_the_model_the_estimate_and_what_to_lower():
    estimate = _estimate("qwen-32b", file=19_851_235_328, kv=32 * GiB, compute=GiB // 2)
    message = fit.context_failure_message(
        model="qwen-32b", estimate=estimate, gpu_offload=True, flash_attn=False, reason="Failed to create llama_context"
    )
    assert message == (
        "model 'qwen-32b': llama.cpp could not create its context (Failed to create llama_context), most likely for "
        "lack of memory: it needs about 18.5 GiB file + 32.0 GiB KV cache (n_ctx 4096, K f16, V f16) + 512 MiB "
        "compute buffers = 51.0 GiB; in models.yaml, lower n_ctx, set type_k and type_v to q8_0 with "
        "flash_attn: true or lower n_gpu_layers"
    )


def test_context_failure_with_a_quantized_cache_on_a_cpu_build_only_suggests_n_ctx():
    estimate = dataclasses.replace(_estimate("m", file=GiB, kv=GiB), type_k="q8_0", type_v="q4_0")
    message = fit.context_failure_message(
        model="m", estimate=estimate, gpu_offload=False, flash_attn=True, reason="Failed to create llama_context"
    )
    assert message.endswith(
        "(n_ctx 4096, K q8_0, V q4_0) + 0 MiB compute buffers = 2.0 GiB; in models.yaml, lower n_ctx"
    )


def test_context_failure_without_an_estimate_says_so():
    message = fit.context_failure_message(
        model="m", estimate=None, gpu_offload=False, flash_attn=True, reason="Failed to create llama_context"
    )
    assert message == (
        "model 'm': llama.cpp could not create its context (Failed to create llama_context), most likely for lack "
        "of memory: its size could not be estimated; in models.yaml, lower n_ctx or set type_k and type_v to q8_0"
    )


def test_model_failure_names_the_file_and_its_size():
    message = fit.model_failure_message(
        model="m", path="/m.gguf", file_bytes=GiB, gpu_offload=True, reason="Failed to load model from file: /m.gguf"
    )
    assert message == (
        "model 'm': llama.cpp cannot load /m.gguf (1.0 GiB): Failed to load model from file: /m.gguf; the file may "
        "be damaged or of an architecture this llama.cpp does not know, or memory is short "
        "(lower n_gpu_layers in models.yaml)"
    )


# --- glimp models ------------------------------------------------------------------------------------------


def _models_listing(capsys, config: Path | None = None, *, json_output: bool = True):
    from glimp_cli import cli

    cli.models(config=config, json_output=json_output)
    out = capsys.readouterr().out
    return json.loads(out) if json_output else out


def test_models_lists_each_demo_models_kv_cache_and_the_pairs_total(capsys, demo_config, monkeypatch, tmp_path):
    from glimp_cli.sources import resolve_model_path

    monkeypatch.chdir(tmp_path)  # the packaged models.yaml
    listing = _models_listing(capsys)
    models = {m["name"]: m for m in listing["models"] if m["name"] in ("smollm2-135m", "gemma3-270m")}
    assert {name: (m["kv_cache_bytes"], m["type_k"], m["type_v"]) for name, m in models.items()} == {
        "smollm2-135m": (94_371_840, "f16", "f16"),
        "gemma3-270m": (75_497_472, "f16", "f16"),
    }
    files = {name: resolve_model_path(demo_config.model(name)).stat().st_size for name in models}
    assert {name: m["file_bytes"] for name, m in models.items()} == files
    compute = {"smollm2-135m": 512 * 49152 * 4, "gemma3-270m": 512 * 262144 * 4}  # a batch's logits
    assert {name: m["compute_bytes"] for name, m in models.items()} == {
        name: logits + fit.COMPUTE_ALLOWANCE_BYTES for name, logits in compute.items()
    }
    pair = next(p for p in listing["pairs"] if p["name"] == "demo")
    assert pair["needed_bytes"] == sum(
        m["file_bytes"] + m["kv_cache_bytes"] + m["compute_bytes"] for m in models.values()
    )
    memory = listing["memory"]
    if memory["free_bytes"] is None:
        assert pair["fit"] == "unknown"
    else:
        assert pair["fit"] == ("fits" if pair["needed_bytes"] <= memory["free_bytes"] else "does not fit")


HF_CONFIG = (
    "models:\n  s:\n    path: s.gguf\n  l:\n    hf: nobody/no-such-repo/model.gguf\n"
    "pairs:\n  p:\n    small: s\n    large: l\n"
)


def test_a_model_not_downloaded_has_no_estimate_and_its_pair_is_unknown(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write_gguf(
        tmp_path / "s.gguf", TOY | {"toy.attention.head_count": ("uint32", 8), "toy.embedding_length": ("uint32", 512)}
    )
    config = tmp_path / "models.yaml"
    config.write_text(HF_CONFIG, encoding="utf-8")
    listing = _models_listing(capsys, config)
    small, large = listing["models"]
    assert (small["kv_cache_bytes"], small["estimate_note"]) == (4096 * 384 * 2 * 2, None)
    assert (large["file_bytes"], large["kv_cache_bytes"], large["estimate_note"]) == (None, None, "not downloaded")
    assert (listing["pairs"][0]["needed_bytes"], listing["pairs"][0]["fit"]) == (None, "unknown")
    monkeypatch.setenv("COLUMNS", "240")  # table cells unwrapped
    text = _models_listing(capsys, config, json_output=False)
    assert "not downloaded" in text and "unknown" in text


def test_a_file_whose_header_cannot_be_read_is_listed_with_why(capsys, tmp_path):
    for name in ("s", "l"):
        (tmp_path / f"{name}.gguf").write_bytes(b"GGUF" + bytes(60))
    config = tmp_path / "models.yaml"
    config.write_text(HF_CONFIG.replace("hf: nobody/no-such-repo/model.gguf", "path: l.gguf"), encoding="utf-8")
    listing = _models_listing(capsys, config)
    assert [(m["status"], m["estimate_note"]) for m in listing["models"]] == [
        ("ok", f"{tmp_path / name}.gguf: GGUF version 0 is not supported (2 and later are)") for name in ("s", "l")
    ]
