"""The tiny Qwen3 / R1-Distill fixtures (tests/tiny_models.py): real tokenizers, runs that end for real reasons."""

from __future__ import annotations

import ctypes
import subprocess

import llama_cpp  # isort: skip
import jinja2
import numpy as np
import pytest
from llama_cpp import Llama

import tiny_models as builder
from conftest import NATALIA
from glimp_cli.entropy import full_entropy

QWEN3_IDS = {"eos": 151645, "bos": 151643, "think": 151667, "close": 151668, "end_of_turn": 151645}
R1_IDS = {"eos": 151643, "bos": 151646, "think": 151648, "close": 151649, "end_of_turn": 151643}
MODELS = {
    "qwen3_small": (151936, QWEN3_IDS),
    "qwen3_large": (151936, QWEN3_IDS),
    "r1": (152064, R1_IDS),
}
SENTENCE = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.\n\nHow many?"
SENTENCE_IDS = [45, 4212, 685, 6088, 26111, 311, 220, 19, 23, 315, 1059, 4780, 304, 5813, 11, 323, 1221, 1340, 6088]
SENTENCE_IDS += [4279, 438, 1657, 304, 3217, 382, 4340, 1657, 30]  # ".\n\n" is one token: 382
BLANK_LINES = {271, 382}  # "\n\n", ".\n\n"
RUN_BOUND = 1000  # tokens: a sampled run thinks, closes and ends its turn within this
ANSWER_BOUND = 100  # tokens from `</think>` to the end of turn


@pytest.fixture(scope="module")
def loaded(tiny_models):
    """Each tiny model loaded as the brief's tests load it."""
    return {
        name: Llama(model_path=str(getattr(tiny_models, name)), n_ctx=512, n_threads=1, verbose=False, logits_all=False)
        for name in MODELS
    }


def family_prompt(tiny_models, name: str, problem: str) -> str:
    """The chat template rendered as the real model would see it, thinking on."""
    if name == "r1":
        template, bos = tiny_models.r1_template, "<｜begin▁of▁sentence｜>"
    else:
        template, bos = tiny_models.qwen3_template, "<|endoftext|>"
    messages = [{"role": "user", "content": problem}]
    text = (
        jinja2.Environment()
        .from_string(template)
        .render(messages=messages, add_generation_prompt=True, enable_thinking=True, bos_token=bos)
    )
    return text if name == "r1" else text + "<think>\n"  # Qwen3's template leaves the opening to the model


def prompt_tokens(llm: Llama, prompt: str) -> list[int]:
    # The R1 template writes its BOS itself: the tokenizer must not add a second one.
    return llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)


def last_logits(llm: Llama) -> np.ndarray:
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float64)


def piece(llm: Llama, token: int, *, special: bool) -> bytes:
    buffer = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(llama_cpp.llama_model_get_vocab(llm.model), token, buffer, 64, 0, special)
    return buffer.raw[:n]


def sample_run(llm: Llama, tokens: list[int], *, seed: int, temperature: float, limit: int) -> list[int]:
    """Tokens generated after `tokens` until an end-of-generation token (included) or `limit`."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    rng = np.random.default_rng(seed)
    llm.reset()
    llm.eval(tokens)
    out: list[int] = []
    while len(out) < limit:
        logits = last_logits(llm)
        if temperature == 0:
            token = int(np.argmax(logits))
        else:
            z = (logits - logits.max()) / temperature
            p = np.exp(z) / np.exp(z).sum()
            token = int(rng.choice(p.size, p=p))
        out.append(token)
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        llm.eval([token])
    return out


@pytest.mark.parametrize("name", MODELS)
def test_vocabulary_is_padded_as_the_real_model(loaded, name):
    assert loaded[name].n_vocab() == MODELS[name][0]


@pytest.mark.parametrize("name", MODELS)
def test_bos_and_eos_are_the_families_ids(loaded, name):
    llm, ids = loaded[name], MODELS[name][1]
    assert (llm.token_bos(), llm.token_eos()) == (ids["bos"], ids["eos"])


def test_only_r1_adds_bos(loaded):
    assert {name: llm._model.add_bos_token() for name, llm in loaded.items()} == {
        "qwen3_small": False,
        "qwen3_large": False,
        "r1": True,
    }


@pytest.mark.parametrize("name", MODELS)
def test_end_of_turn_ends_generation_and_think_markers_do_not(loaded, name):
    vocab = llama_cpp.llama_model_get_vocab(loaded[name].model)
    ids = MODELS[name][1]
    is_eog = [bool(llama_cpp.llama_vocab_is_eog(vocab, ids[key])) for key in ("end_of_turn", "think", "close")]
    assert is_eog == [True, False, False]


@pytest.mark.parametrize("name", MODELS)
def test_think_markers_are_single_special_tokens(loaded, name):
    llm, ids = loaded[name], MODELS[name][1]
    as_special = [llm.tokenize(text.encode(), add_bos=False, special=True) for text in ("<think>", "</think>")]
    assert as_special == [[ids["think"]], [ids["close"]]]


@pytest.mark.parametrize("name", MODELS)
def test_think_markers_render_as_text_and_end_of_turn_as_nothing(loaded, name):
    llm, ids = loaded[name], MODELS[name][1]
    pieces = [piece(llm, ids[key], special=False) for key in ("think", "close", "end_of_turn")]
    assert pieces == [b"<think>", b"</think>", b""]


@pytest.mark.parametrize(
    "name, token, rendered",
    [
        ("qwen3_small", 151657, b"<tool_call>"),  # special: false -> USER_DEFINED, rendered as text
        ("qwen3_small", 151659, b""),  # <|fim_prefix|>, special: false but looks special -> CONTROL
        ("qwen3_small", 151644, b""),  # <|im_start|>
        ("r1", 151644, b""),  # <｜User｜>, special: false but looks special -> CONTROL
        ("r1", 151647, b""),  # <|EOT|>
        ("r1", 151657, b"<tool_call>"),
    ],
)
def test_added_token_types_follow_llama_cpp_converter(loaded, name, token, rendered):
    assert piece(loaded[name], token, special=False) == rendered


def test_qwen3_end_of_turn_renders_when_special_pieces_are_asked_for(loaded):
    assert piece(loaded["qwen3_small"], 151645, special=True) == b"<|im_end|>"


def test_r1_end_of_sentence_renders_when_special_pieces_are_asked_for(loaded):
    assert piece(loaded["r1"], 151643, special=True) == "<｜end▁of▁sentence｜>".encode()


def test_ordinary_text_tokenizes_alike_in_all_models_and_the_vocabulary_gguf(loaded, tiny_models):
    vocab_only = Llama(model_path=str(tiny_models.vocab), vocab_only=True, verbose=False)
    reference = vocab_only.tokenize(SENTENCE.encode(), add_bos=False, special=False)
    ours = {name: llm.tokenize(SENTENCE.encode(), add_bos=False, special=False) for name, llm in loaded.items()}
    assert reference == SENTENCE_IDS
    assert ours == {name: SENTENCE_IDS for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_prompt_ends_with_the_thinking_opened(loaded, tiny_models, name):
    llm, ids = loaded[name], MODELS[name][1]
    tokens = prompt_tokens(llm, family_prompt(tiny_models, name, NATALIA))
    assert tokens[-2:] == [ids["think"], 198]  # "<think>", "\n"


@pytest.mark.parametrize("name", MODELS)
def test_greedy_thinking_opens_with_a_word_not_an_end(loaded, tiny_models, name):
    llm = loaded[name]
    first = sample_run(
        llm, prompt_tokens(llm, family_prompt(tiny_models, name, NATALIA)), seed=0, temperature=0, limit=1
    )
    assert llm.detokenize(first) == b"Okay"


@pytest.mark.parametrize("name", MODELS)
def test_first_token_entropy_is_low_after_a_blank_line_and_high_after_a_full_stop(loaded, tiny_models, name):
    llm = loaded[name]
    prompt = family_prompt(tiny_models, name, NATALIA) + "Okay want where game last"
    entropies = []
    for step_end in ("\n\n", ".\n\n"):
        llm.reset()
        llm.eval(prompt_tokens(llm, prompt + step_end))
        entropies.append(full_entropy(last_logits(llm)))
    assert entropies[0] < 1.0 < 1.5 < entropies[1]


@pytest.mark.parametrize("name", MODELS)
def test_sampled_run_thinks_in_steps_then_closes_then_ends_its_turn(tiny_models, name):
    llm = Llama(model_path=str(getattr(tiny_models, name)), n_ctx=2048, n_threads=1, verbose=False, logits_all=False)
    ids = MODELS[name][1]
    run = sample_run(
        llm, prompt_tokens(llm, family_prompt(tiny_models, name, NATALIA)), seed=1, temperature=0.6, limit=RUN_BOUND
    )
    close = run.index(ids["close"])  # ValueError: the thinking never closed
    steps = [i for i, token in enumerate(run[:close]) if token in BLANK_LINES]
    assert run[-1] == ids["end_of_turn"]
    assert run.count(ids["close"]) == 1
    assert len(steps) >= 3
    assert max(np.diff([-1, *steps])) <= 100  # no step runs on for ever
    assert len(run) - close <= ANSWER_BOUND
    assert run[close + 1] == 271  # "</think>\n\n", as the real models write it


@pytest.mark.parametrize("name", MODELS)
def test_greedy_run_closes_its_thinking_and_ends_its_turn_too(tiny_models, name):
    llm = Llama(model_path=str(getattr(tiny_models, name)), n_ctx=2048, n_threads=1, verbose=False, logits_all=False)
    ids = MODELS[name][1]
    run = sample_run(
        llm, prompt_tokens(llm, family_prompt(tiny_models, name, NATALIA)), seed=0, temperature=0, limit=RUN_BOUND
    )
    assert (run.count(ids["close"]), run[-1]) == (1, ids["end_of_turn"])


def test_build_is_deterministic(tiny_models, tmp_path):
    rebuilt = tmp_path / "qwen3-tiny-small.gguf"
    builder.write_model(
        rebuilt,
        family=builder.QWEN3,
        shape=builder.SMALL,
        vocabulary=builder.read_vocabulary(tiny_models.vocab),
        template=tiny_models.qwen3_template,
        name="qwen3-tiny-small",
    )
    assert builder.sha256_of(rebuilt) == builder.sha256_of(tiny_models.qwen3_small)


def test_cache_folder_is_the_environment_variable_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv(builder.CACHE_ENV, str(tmp_path))
    assert builder.cache_dir("0.3.36") == tmp_path


def test_cache_folder_defaults_to_one_per_llama_cpp_version(monkeypatch):
    monkeypatch.delenv(builder.CACHE_ENV, raising=False)
    assert builder.cache_dir("0.3.36") == builder.DEFAULT_CACHE_ROOT / "llama-cpp-python-0.3.36"


def test_failed_download_names_the_version_the_folder_and_pips_last_words(monkeypatch, tmp_path):
    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="ERROR: No matching distribution found\n")

    monkeypatch.setattr(builder.subprocess, "run", failing_pip)
    with pytest.raises(builder.TinyModelError) as raised:
        builder.fetch_sdist(tmp_path, "9.9.9")
    assert str(raised.value) == (
        f"could not download the llama-cpp-python==9.9.9 sdist into {tmp_path} "
        "(needed for the Qwen vocabulary and chat templates): ERROR: No matching distribution found"
    )
    assert list(tmp_path.iterdir()) == []  # no half-written file left behind
