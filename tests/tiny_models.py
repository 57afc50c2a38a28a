"""Tiny stand-ins for the real reasoning pairs: Qwen3 (small and large) and DeepSeek-R1-Distill-Qwen-32B.

No real weights can be downloaded in the test environment, but glimp must be proven on the real tokenizers and
chat templates: token ids, special-token handling, end-of-generation tokens and the `<think>` markers all differ
between families. Each model built here carries the REAL vocabulary (the Qwen BPE from llama.cpp's own
`models/ggml-vocab-qwen2.gguf`, taken from the llama-cpp-python sdist of the installed version), each family's
added tokens at their real ids and types, and the family's real chat template (llama.cpp's
`models/templates/*.jinja`), with a few layers of small weights (width 64-96) shaped so that runs end for real
reasons:

- the residual stream carries a few feature channels besides its "content" channels (a constant; "the last token
  is a newline / blank line / `</think>`"; "the last word ends its sentence"), and the output head turns them into
  logits: ~300 ordinary word tokens chained into sentences (each word has a likely successor), a blank line
  ("\n\n" or ".\n\n") at each sentence end, a step-opening word after each blank line ("So", "Then", ...; sharp
  after "\n\n", under 1 nat; flat after ".\n\n", about 2 nats);
- two heads of layer 0 are detectors, their query constant and their key high only at chosen tokens: one writes
  "a `</think>` is in the context" (then `</think>` is never written again, "\n\n" follows it, and the end-of-turn
  token ends the next sentence); one counts the blank lines so far (k / (k + turn-opening tokens)), and
  `</think>` opens a step the likelier the more steps there were: sampled at T=0.6 the thinking closes after
  ~5-25 steps (~80-350 tokens), and greedy decoding closes too;
- all other weights are random; they write only the content channels, so the logits depend on the whole context
  (by ~0.1-1 logit: a KV-cache mistake shows) without breaking the structure above.

Everything is deterministic (fixed numpy seeds): the same bytes on every build. Files are built once into a cache
folder and renamed into place atomically. This module has no pytest in it: tests/conftest.py wraps it in fixtures.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from glimp_cli.errors import ModelFileError
from glimp_cli.gguf_header import read_gguf_header

BUILDER_VERSION = 1  # bump on any change to what is written: cached files are rebuilt under a new folder name
CACHE_ENV = "GLIMP_TEST_CACHE"
DEFAULT_CACHE_ROOT = Path.home() / ".cache" / "glimp-tests"
SDIST_VENDOR = "vendor/llama.cpp/models"
VOCAB_FILE = "ggml-vocab-qwen2.gguf"
QWEN3_TEMPLATE_FILE = "Qwen-Qwen3-0.6B.jinja"
R1_TEMPLATE_FILE = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"
DOWNLOAD_TIMEOUT_S = 600

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType values
QWEN_BASE_VOCAB = 151643  # ids below this are the byte-level BPE shared by every Qwen2/2.5/3 model
NEWLINE, BLANK_LINE, DOT_BLANK_LINE = 198, 271, 382  # "\n", "\n\n", ".\n\n" in the Qwen BPE

# Added tokens (id, text, special). Sources:
# - Qwen3: tokenizer_config.json "added_tokens_decoder" of Qwen/Qwen3-0.6B and Qwen/Qwen3-4B
#   (https://huggingface.co/Qwen/Qwen3-0.6B/blob/main/tokenizer_config.json; a public copy of the 4B's file is in
#   github.com/akougkas/warpio-cli warpio-docs/ai-docs/model_cards/qwen3:4b.md): eos "<|im_end|>", pad and bos
#   "<|endoftext|>" (config.json bos_token_id 151643), add_bos_token false, vocab_size 151936.
# - R1-Distill: tokenizer_config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-32B (the same added tokens in every
#   R1-Distill-Qwen size; https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-32B/blob/main/
#   tokenizer_config.json): bos "<｜begin▁of▁sentence｜>" with add_bos_token true, eos and pad
#   "<｜end▁of▁sentence｜>"; config.json vocab_size 152064.
# Token types follow llama.cpp's converter (conversion/base.py get_vocab_base in the same sdist): CONTROL when
# "special" is true OR the text looks special ("<|...|>" or "<｜...｜>"), otherwise USER_DEFINED (rendered as text):
# so "<think>", "</think>", "<tool_call>" are USER_DEFINED while "<|fim_prefix|>" (special: false) is CONTROL.
QWEN3_ADDED = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)
R1_ADDED = (
    (151643, "<｜end▁of▁sentence｜>", True),
    (151644, "<｜User｜>", False),
    (151645, "<｜Assistant｜>", False),
    (151646, "<｜begin▁of▁sentence｜>", True),
    (151647, "<|EOT|>", False),
    (151648, "<think>", False),
    (151649, "</think>", False),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)


class TinyModelError(RuntimeError):
    """The tiny models could not be built (download, extraction or writing failed); says which step and where."""


@dataclass(frozen=True)
class Family:
    """A model family's tokenizer: its added tokens, special ids and chat template."""

    architecture: str  # "qwen3" or "qwen2"
    tokenizer_pre: str  # llama.cpp's pre-tokenizer name, as the converter writes it
    added: tuple[tuple[int, str, bool], ...]
    n_vocab: int  # padded, as the real model's embedding matrix
    bos: int
    eos: int
    pad: int
    add_bos: bool
    think_close: int
    end_of_turn: int
    template_file: str
    context_length: int
    anchors: tuple[int, ...]  # tokens that open a turn or the thinking (the step counter's baseline)

    def token_type(self, text: str, special: bool) -> int:
        looks_special = (text.startswith("<|") and text.endswith("|>")) or (
            text.startswith("<｜") and text.endswith("｜>")
        )
        return CONTROL if special or looks_special else USER_DEFINED


QWEN3 = Family(
    architecture="qwen3",
    tokenizer_pre="qwen2",
    added=QWEN3_ADDED,
    n_vocab=151936,
    bos=151643,
    eos=151645,
    pad=151643,
    add_bos=False,
    think_close=151668,
    end_of_turn=151645,
    template_file=QWEN3_TEMPLATE_FILE,
    context_length=40960,
    anchors=(151644, 151667),  # <|im_start|>, <think>
)
R1 = Family(
    architecture="qwen2",
    tokenizer_pre="deepseek-r1-qwen",
    added=R1_ADDED,
    n_vocab=152064,
    bos=151646,
    eos=151643,
    pad=151643,
    add_bos=True,
    think_close=151649,
    end_of_turn=151643,
    template_file=R1_TEMPLATE_FILE,
    context_length=131072,
    anchors=(151644, 151645, 151648),  # <｜User｜>, <｜Assistant｜>, <think>
)


@dataclass(frozen=True)
class Shape:
    """Sizes and seed of one tiny model."""

    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    seed: int


SMALL = Shape(n_embd=64, n_layer=3, n_head=4, n_head_kv=2, n_ff=128, seed=1)
LARGE = Shape(n_embd=96, n_layer=4, n_head=6, n_head_kv=2, n_ff=192, seed=2)
R1_SHAPE = replace(SMALL, seed=3)


@dataclass(frozen=True)
class TinyModels:
    """Paths of the three tiny GGUFs, the two chat templates and the extracted vocabulary GGUF."""

    qwen3_small: Path
    qwen3_large: Path
    r1: Path
    qwen3_template: str
    r1_template: str
    vocab: Path


# --- the language the models speak -------------------------------------------------------------------------------

LANGUAGE_SEED = 7  # shared by all models: the same sentences, different weights
N_WORDS = 300
STEP_OPENERS = ("Okay", "So", "Then", "Now", "Wait", "Let", "Next", "Hmm", "First", "Also")
SENTENCE_WORDS = (6, 20)  # inclusive range of words per sentence

# Feature channels of the residual stream (the others are "content" channels, written by the random layers).
(
    CONST,
    AFTER_BLANK,  # the last token is "\n\n"
    AFTER_DOT_BLANK,  # ... ".\n\n"
    AFTER_NEWLINE,  # ... "\n" (how both families' generation prompts end)
    AFTER_CLOSE,  # ... `</think>`
    ENDS_BLANK,  # the last token is a word that ends its sentence with "\n\n"
    ENDS_DOT_BLANK,  # ... with ".\n\n"
    ANCHOR,  # a token that opens a turn or the thinking: the step counter's baseline
    THINKING_OVER,  # written by layer 0: a `</think>` is in the context
    STEP_COUNT,  # written by layer 0: k / (k + anchors) for k blank lines in the context
) = range(10)
N_FEATURES = 10
FEATURE = 2.0  # value of an active feature channel in the embedding
DETECTOR_SCORE = 16.0  # nats between a detector's wanted keys and the others
SUCCESSOR_LOGIT = 4.5  # a word's designed next word, over the ~0 of the other words
NEVER = -30.0
ATTENTION_SHARPNESS = 1.7  # q and k scale of the random heads: scores of std ~3 nats, attention on a few positions
ATTENTION_WRITE = 2.0  # norm each random attention layer adds to the content channels (content norm: ~sqrt(d))
FFN_WRITE = 1.5  # the same for each feed-forward layer
OPENER_CONTEXT = 0.15  # per channel: how much the step openers' logits follow the context

# Logits (T=1) of the step openers and `</think>` by the break before them. `</think>` grows likelier with each
# step: P(first token is `</think>` | T=0.6) ~1% at STEP_COUNT 0.5, ~20% at 0.75, and it becomes the greedy choice
# near 0.85, so greedy runs end too (after 14-19 steps, 200-270 tokens, from the tests' prompt).
OPENER_BONUS = {AFTER_NEWLINE: {"Okay": 5.0}, AFTER_BLANK: {"So": 5.0}, AFTER_DOT_BLANK: {"Then": 2.0}}
CLOSE_AFTER = {AFTER_BLANK: -1.7, AFTER_DOT_BLANK: -4.9}
CLOSE_RAMP = 7.9  # `</think>` logit per unit of STEP_COUNT


@dataclass(frozen=True)
class Language:
    """Token ids of the designed vocabulary: words chained into sentences, step openers, sentence ends."""

    words: tuple[int, ...]
    openers: dict[str, int]
    successor: dict[int, int]  # word or opener -> next word
    sentence_end: dict[int, int]  # last word of a sentence -> BLANK_LINE or DOT_BLANK_LINE


def design_language(tokens: list[str]) -> Language:
    """Pick ~300 common words and the step openers from the vocabulary, and chain the words into sentences."""
    index = {text: i for i, text in enumerate(tokens[:QWEN_BASE_VOCAB])}
    words = [i for i, text in enumerate(tokens[:QWEN_BASE_VOCAB]) if re.fullmatch(r"Ġ[a-z]{3,9}", text)][:N_WORDS]
    openers = {text: index[text] for text in STEP_OPENERS}
    rng = np.random.default_rng(LANGUAGE_SEED)
    order = [words[i] for i in rng.permutation(len(words))]
    sentences: list[list[int]] = []
    while order:
        length = int(rng.integers(SENTENCE_WORDS[0], SENTENCE_WORDS[1] + 1))
        sentences.append(order[:length])
        order = order[length:]
    successor: dict[int, int] = {}
    sentence_end: dict[int, int] = {}
    for k, sentence in enumerate(sentences):
        successor.update(zip(sentence, sentence[1:]))
        # By design the greedy path alternates: Okay -> s0 "\n\n" So -> s1 ".\n\n" Then -> s2 "\n\n" So -> s1 ...
        ends_blank = k % 2 == 0 if k < 3 else bool(rng.integers(2))
        sentence_end[sentence[-1]] = BLANK_LINE if ends_blank else DOT_BLANK_LINE
    for k, text in enumerate(STEP_OPENERS):
        successor[openers[text]] = sentences[k][0]
    return Language(words=tuple(words), openers=openers, successor=successor, sentence_end=sentence_end)


# --- weights ----------------------------------------------------------------------------------------------------


def _unit_rows(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Random rows of norm sqrt(cols): one unit of rms per channel."""
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    x *= np.sqrt(cols) / np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _rms_norm(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x) + eps)


def model_weights(family: Family, shape: Shape, language: Language) -> dict[str, np.ndarray]:
    """All tensors of one tiny model, by GGUF name (numpy shapes are (out, in))."""
    rng = np.random.default_rng(shape.seed)
    d, n_vocab = shape.n_embd, family.n_vocab
    n_content = d - N_FEATURES
    close, eot = family.think_close, family.end_of_turn

    embd = np.zeros((n_vocab, d), dtype=np.float32)
    embd[:, CONST] = FEATURE
    embd[:, N_FEATURES:] = _unit_rows(rng, n_vocab, n_content)
    for token, channel in ((NEWLINE, AFTER_NEWLINE), (BLANK_LINE, AFTER_BLANK), (DOT_BLANK_LINE, AFTER_DOT_BLANK)):
        embd[token, channel] = FEATURE
    embd[close, AFTER_CLOSE] = FEATURE
    for word, end in language.sentence_end.items():
        embd[word, ENDS_BLANK if end == BLANK_LINE else ENDS_DOT_BLANK] = FEATURE
    for token in family.anchors:
        embd[token, ANCHOR] = FEATURE

    # Output rows in logit units (T=1) by feature channel: an active channel is FEATURE / rms ~ FEATURE.
    not_after_breaks = {AFTER_BLANK: -12.0, AFTER_DOT_BLANK: -12.0, AFTER_NEWLINE: -12.0, AFTER_CLOSE: -12.0}
    logits: dict[int, dict[int, float]] = {word: {CONST: 0.0, **not_after_breaks} for word in language.words}
    for text, opener in language.openers.items():
        logits[opener] = {CONST: -8.0, AFTER_BLANK: 8.0, AFTER_DOT_BLANK: 8.0, AFTER_NEWLINE: 8.0}
        for channel, bonus in OPENER_BONUS.items():
            logits[opener][channel] += bonus.get(text, 0.0)
    logits[BLANK_LINE] = {CONST: 0.5, ENDS_BLANK: 7.0, **not_after_breaks, AFTER_CLOSE: 20.0}  # "</think>\n\n"
    logits[DOT_BLANK_LINE] = {CONST: 0.5, ENDS_DOT_BLANK: 7.0, **not_after_breaks}
    # `</think>` opens a step now and then while thinking; never after it, nor right after the prompt.
    logits[close] = {CONST: NEVER, THINKING_OVER: NEVER, AFTER_CLOSE: -12.0}
    logits[close].update({channel: -NEVER + value for channel, value in CLOSE_AFTER.items()})
    # Once thinking is over, the end of turn ends the first sentence that ends.
    logits[eot] = {CONST: NEVER, THINKING_OVER: -NEVER - 2.0, ENDS_BLANK: 12.0, ENDS_DOT_BLANK: 12.0}
    logits[eot].update(not_after_breaks)

    out = np.zeros((n_vocab, d), dtype=np.float32)
    out[:, CONST] = NEVER / FEATURE
    for token, channels in logits.items():
        out[token, :N_FEATURES] = 0.0
        for channel, value in channels.items():
            out[token, channel] = value / FEATURE
    out[close, STEP_COUNT] = CLOSE_RAMP  # STEP_COUNT runs from 0 to 1, not to FEATURE
    content = embd[:, N_FEATURES:]
    for token, nxt in language.successor.items():
        out[nxt, N_FEATURES:] += SUCCESSOR_LOGIT * content[token] / n_content
    for opener in language.openers.values():
        # The openers' odds, and so a step's first-token entropy, follow the context: a random reading of the
        # content channels, made blind to the break tokens' own content so the sharp/flat contrast stays.
        reading = rng.standard_normal(n_content).astype(np.float32) * OPENER_CONTEXT
        breaks = content[[BLANK_LINE, DOT_BLANK_LINE, NEWLINE]].T
        reading -= breaks @ np.linalg.lstsq(breaks, reading, rcond=None)[0]
        out[opener, N_FEATURES:] += reading

    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": embd.astype(np.float16),
        "output_norm.weight": np.ones(d, dtype=np.float32),
        "output.weight": out.astype(np.float16),
    }
    active = float(_rms_norm(embd[BLANK_LINE])[AFTER_BLANK])  # an active channel after attn_norm (weights 1)
    for layer in range(shape.n_layer):
        tensors.update(_layer(rng, family, shape, layer, active=active))
    return tensors


@dataclass(frozen=True)
class Detector:
    """A layer-0 head whose key is high at tokens with a `key` channel, and whose value is their `value` channels."""

    kv_head: int
    keys: tuple[int, ...]
    values: tuple[int, ...]
    value: float  # what the head writes when all its attention is on tokens with a value channel
    writes: int  # the residual channel it writes


# THINKING_OVER: attention lands on any `</think>` (or spreads evenly over a context without one, whose values are 0).
# STEP_COUNT: attention spreads evenly over the anchors and the blank lines; the value is 1 at blank lines only.
DETECTORS = (
    Detector(kv_head=0, keys=(AFTER_CLOSE,), values=(AFTER_CLOSE,), value=FEATURE, writes=THINKING_OVER),
    Detector(
        kv_head=1,
        keys=(AFTER_BLANK, AFTER_DOT_BLANK, ANCHOR),
        values=(AFTER_BLANK, AFTER_DOT_BLANK),
        value=1.0,
        writes=STEP_COUNT,
    ),
)


def _layer(rng: np.random.Generator, family: Family, shape: Shape, layer: int, *, active: float) -> dict:
    """One block: random weights writing only content channels; in layer 0, one head per KV head is a detector."""
    d, hd = shape.n_embd, shape.n_embd // shape.n_head
    n_q, n_kv = shape.n_head * hd, shape.n_head_kv * hd
    qk_scale = 1.0 if family.architecture == "qwen3" else ATTENTION_SHARPNESS  # qwen3 scales in q_norm/k_norm
    wq = rng.standard_normal((n_q, d), dtype=np.float32) * (qk_scale / np.sqrt(d))
    wk = rng.standard_normal((n_kv, d), dtype=np.float32) * (qk_scale / np.sqrt(d))
    wv = rng.standard_normal((n_kv, d), dtype=np.float32) / np.sqrt(d)
    # Each head's output (norm ~sqrt(hd) when its attention is peaked) adds ~ATTENTION_WRITE to the content norm.
    wo = rng.standard_normal((d, n_q), dtype=np.float32) * (ATTENTION_WRITE / np.sqrt(n_q * (d - N_FEATURES)))
    wo[:N_FEATURES] = 0.0  # the random heads write content only
    bq = rng.standard_normal(n_q, dtype=np.float32) * 0.1
    bk = rng.standard_normal(n_kv, dtype=np.float32) * 0.1
    bv = rng.standard_normal(n_kv, dtype=np.float32) * 0.1
    q_norm = np.full(hd, ATTENTION_SHARPNESS, dtype=np.float32)
    k_norm = np.full(hd, ATTENTION_SHARPNESS, dtype=np.float32)
    if layer == 0:
        group = shape.n_head // shape.n_head_kv  # query heads per KV head
        slow = hd // 2 - 1  # in a head: the slowest RoPE pair (NEOX), so the detectors ignore positions
        for detector in DETECTORS:
            # The first query head of the KV head is the detector; its query is a constant and its key +-K, both on
            # the slowest RoPE pair, so the score is +-DETECTOR_SCORE/2 whatever the distance.
            q_rows = slice(detector.kv_head * group * hd, (detector.kv_head * group + 1) * hd)
            kv_rows = slice(detector.kv_head * hd, (detector.kv_head + 1) * hd)
            q_dim, k_dim, v_dim = q_rows.start + slow, kv_rows.start + slow, kv_rows.start
            wq[q_rows] = 0.0
            bq[q_rows] = 0.0
            wk[kv_rows] = 0.0  # qwen3's k_norm would spread other components over the key
            bk[kv_rows] = 0.0
            wv[v_dim] = 0.0
            bv[v_dim] = 0.0
            for channel in detector.values:
                wv[v_dim, channel] = detector.value / active
            wo[:, q_rows] = 0.0
            wo[detector.writes, q_rows.start] = 1.0
            for head in range(detector.kv_head * group + 1, (detector.kv_head + 1) * group):
                wo[:, head * hd] = 0.0  # the other query heads of this KV head do not pass the detector's value on
            if family.architecture == "qwen3":
                # q_norm/k_norm turn the lone component into +-sqrt(hd) * gain: the score is sqrt(hd) * gain^2.
                wq[q_dim, CONST] = 1.0
                wk[k_dim, CONST] = -1.0
                for channel in detector.keys:
                    wk[k_dim, channel] = 2.0  # CONST and an active channel are equal: the sum flips sign
            else:
                q_value = 4.0
                key = DETECTOR_SCORE / 2 * np.sqrt(hd) / q_value
                bq[q_dim] = q_value
                bk[k_dim] = -key
                for channel in detector.keys:
                    wk[k_dim, channel] = 2.0 * key / active
        if family.architecture == "qwen3":
            gain = np.sqrt(DETECTOR_SCORE / 2 / np.sqrt(hd))
            q_norm[slow] = gain
            k_norm[slow] = gain
    ffn_gate = rng.standard_normal((shape.n_ff, d), dtype=np.float32) / np.sqrt(d)
    ffn_up = rng.standard_normal((shape.n_ff, d), dtype=np.float32) / np.sqrt(d)
    # silu(gate) * up has an rms of ~0.5 per unit: the FFN adds ~FFN_WRITE to the content norm.
    ffn_down = rng.standard_normal((d, shape.n_ff), dtype=np.float32) * (
        FFN_WRITE / (0.5 * np.sqrt(shape.n_ff * (d - N_FEATURES)))
    )
    ffn_down[:N_FEATURES] = 0.0
    prefix = f"blk.{layer}."
    tensors = {
        prefix + "attn_norm.weight": np.ones(d, dtype=np.float32),
        prefix + "attn_q.weight": wq,
        prefix + "attn_k.weight": wk,
        prefix + "attn_v.weight": wv,
        prefix + "attn_output.weight": wo,
        prefix + "ffn_norm.weight": np.ones(d, dtype=np.float32),
        prefix + "ffn_gate.weight": ffn_gate,
        prefix + "ffn_up.weight": ffn_up,
        prefix + "ffn_down.weight": ffn_down,
    }
    if family.architecture == "qwen3":
        tensors[prefix + "attn_q_norm.weight"] = q_norm
        tensors[prefix + "attn_k_norm.weight"] = k_norm
    else:
        tensors[prefix + "attn_q.bias"] = bq
        tensors[prefix + "attn_k.bias"] = bk
        tensors[prefix + "attn_v.bias"] = bv
    return tensors


# --- files ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    """The Qwen BPE read from llama.cpp's vocabulary-only GGUF."""

    tokens: list[str]
    merges: list[str]


def read_vocabulary(path: Path) -> Vocabulary:
    """Tokens below the added-token ids, and the merges, of ggml-vocab-qwen2.gguf (read by glimp's own GGUF header
    reader: gguf.GGUFReader builds a numpy view per string, 15 s for this file on a busy machine)."""
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")
    try:
        header = read_gguf_header(path, string_arrays=keys)
    except ModelFileError as exc:
        raise TinyModelError(str(exc)) from exc
    missing = [key for key in keys if not isinstance(header.get(key), tuple)]
    if missing:
        raise TinyModelError(f"{path} has no {', '.join(missing)}")
    return Vocabulary(tokens=list(header[keys[0]][:QWEN_BASE_VOCAB]), merges=list(header[keys[1]]))


def write_model(path: Path, *, family: Family, shape: Shape, vocabulary: Vocabulary, template: str, name: str) -> None:
    """Write one tiny GGUF to `path` (directly: callers write to a temporary name and rename)."""
    import gguf

    language = design_language(vocabulary.tokens)
    tokens = list(vocabulary.tokens)
    types = [NORMAL] * len(tokens)
    for token_id, text, special in family.added:
        if token_id != len(tokens):
            raise TinyModelError(f"added token {text!r} expected at id {len(tokens)}, listed at {token_id}")
        tokens.append(text)
        types.append(family.token_type(text, special))
    for token_id in range(len(tokens), family.n_vocab):
        tokens.append(f"[PAD{token_id}]")
        types.append(UNUSED)

    arch = family.architecture
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    writer.add_context_length(family.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    if arch == "qwen3":
        writer.add_key_length(shape.n_embd // shape.n_head)
        writer.add_value_length(shape.n_embd // shape.n_head)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(family.tokenizer_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(vocabulary.merges)
    writer.add_bos_token_id(family.bos)
    writer.add_eos_token_id(family.eos)
    writer.add_pad_token_id(family.pad)
    writer.add_add_bos_token(family.add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(template)
    for tensor_name, array in model_weights(family, shape, language).items():
        # f16 for the two vocabulary-sized matrices, f32 for the rest (numpy scalars would otherwise promote to f64)
        writer.add_tensor(tensor_name, array if array.dtype == np.float16 else array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def cache_dir(version: str) -> Path:
    """$GLIMP_TEST_CACHE, else ~/.cache/glimp-tests/llama-cpp-python-VERSION."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else DEFAULT_CACHE_ROOT / f"llama-cpp-python-{version}"


def installed_llama_cpp_version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def fetch_sdist(folder: Path, version: str) -> Path:
    """The llama-cpp-python sdist of `version` in `folder`, downloaded with pip when absent."""
    target = folder / f"llama_cpp_python-{version}.tar.gz"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"llama-cpp-python=={version}",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            scratch,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise TinyModelError(f"pip download of llama-cpp-python=={version} took over {exc.timeout} s") from exc
        downloaded = Path(scratch) / target.name
        if done.returncode != 0 or not downloaded.is_file():
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise TinyModelError(
                f"could not download the llama-cpp-python=={version} sdist into {folder} "
                f"(needed for the Qwen vocabulary and chat templates): {' | '.join(tail)}"
            )
        os.replace(downloaded, target)
    return target


def extract_inputs(sdist: Path, folder: Path) -> Path:
    """Extract the vocabulary GGUF and the two templates from the sdist into `folder` (once); returns `folder`."""
    wanted = (VOCAB_FILE, f"templates/{QWEN3_TEMPLATE_FILE}", f"templates/{R1_TEMPLATE_FILE}")
    if all((folder / Path(name).name).is_file() for name in wanted):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    top = sdist.name.removesuffix(".tar.gz")
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for name in wanted:
                member = f"{top}/{SDIST_VENDOR}/{name}"
                source = archive.extractfile(member)
                if source is None:
                    raise KeyError(member)
                _write_atomically(folder / Path(name).name, source.read())
    except (KeyError, tarfile.TarError, OSError, EOFError) as exc:
        raise TinyModelError(f"could not extract {wanted} from {sdist}: {exc}") from exc
    return folder


def _write_atomically(path: Path, data: bytes) -> None:
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(scratch, 0o644)  # mkstemp makes it private
    os.replace(scratch, path)


def _build_atomically(path: Path, write: Callable[[Path], None]) -> None:
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(Path(scratch))
        os.chmod(scratch, 0o644)
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


def ensure_tiny_models(*, cache: Path | None = None, version: str | None = None) -> TinyModels:
    """Build (once per cache folder and builder version) and return the three tiny models."""
    from filelock import FileLock

    version = version or installed_llama_cpp_version()
    root = cache or cache_dir(version)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TinyModelError(f"cannot create the test cache folder {root} (set {CACHE_ENV}): {exc}") from exc
    with FileLock(str(root / ".tiny-models.lock")):
        inputs = root / f"vendor-{version}"
        if not (inputs / VOCAB_FILE).is_file() or not (inputs / R1_TEMPLATE_FILE).is_file():
            extract_inputs(fetch_sdist(root, version), inputs)
        templates = {f: (inputs / f).read_text(encoding="utf-8") for f in (QWEN3_TEMPLATE_FILE, R1_TEMPLATE_FILE)}
        models = root / f"tiny-{version}-v{BUILDER_VERSION}"
        models.mkdir(exist_ok=True)
        plan = {
            "qwen3-tiny-small.gguf": (QWEN3, SMALL),
            "qwen3-tiny-large.gguf": (QWEN3, LARGE),
            "r1-tiny.gguf": (R1, R1_SHAPE),
        }
        vocabulary = None
        for file_name, (family, shape) in plan.items():
            path = models / file_name
            if path.is_file():
                continue
            vocabulary = vocabulary or read_vocabulary(inputs / VOCAB_FILE)

            def write(target: Path, family=family, shape=shape, file_name=file_name) -> None:
                write_model(
                    target,
                    family=family,
                    shape=shape,
                    vocabulary=vocabulary,
                    template=templates[family.template_file],
                    name=file_name.removesuffix(".gguf"),
                )

            _build_atomically(path, write)
    return TinyModels(
        qwen3_small=models / "qwen3-tiny-small.gguf",
        qwen3_large=models / "qwen3-tiny-large.gguf",
        r1=models / "r1-tiny.gguf",
        qwen3_template=templates[QWEN3_TEMPLATE_FILE],
        r1_template=templates[R1_TEMPLATE_FILE],
        vocab=inputs / VOCAB_FILE,
    )


def sha256_of(path: Path) -> str:
    """Hex digest of a file (the build is deterministic: same bytes every time)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
