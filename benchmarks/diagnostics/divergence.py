"""Where greedy text with drafts first differs from the text without, and why (issue 23's problem 104).

    python -m benchmarks.diagnostics.divergence [--pair qwen2.5-coder] [--problem 104] [--threads 2] [--source model]

Runs one gsm8k problem in large mode, greedy, without drafts and with them; at the first token where the two
texts differ it replays the large model's context two ways, as the two runs evaluated it: every generated
token decoded alone, and the last few in one verify batch (logits at every row), and prints the top-2 margin
there, the largest logit difference between the two, and the KV length llama.cpp attends over (cells padded to
256): on the CPU, a one-token decode attends with a split-KV flash-attention path once that length is 512 or
more with more than one thread, and a batch row does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import llama_cpp  # isort: skip  # before numpy, as in glimp_cli.backend
import numpy as np

from glimp_cli.backend import ModelDrafter, draftable_tokens, load_llama, open_session
from glimp_cli.drafting import NgramDrafter
from glimp_cli.config import PACKAGED_CONFIG, load_config, router_settings
from glimp_cli.policy import make_policy
from glimp_cli.router import run
from glimp_cli.session import Sampling
from glimp_cli.sources import resolve_model_path

from benchmarks.perf import DEFAULT_DATA
from glimp_cli.dataset import load_problems

KV_PAD = 256  # llama.cpp pads the attended KV cells to this (flash attention on the CPU)
SPLIT_KV_FROM = 512  # ggml-cpu ops.cpp: use_split_kv_path needs nek1 >= 512, one query row, nth > 1 to matter


def greedy_tokens(small, large, problem: str, settings, drafter) -> tuple[list[int], int]:
    """The large model's tokens after a large-mode greedy run (prompt + transcript), and its prompt length."""
    large.speculate = drafter
    try:
        run(problem, small=small, large=large, settings=settings, policy=make_policy("large"))
    finally:
        large.speculate = None
    return list(large._tokens), large._prompt_len


def replay_logits(llm, tokens: list[int], prompt_len: int, position: int, *, batch: int) -> np.ndarray:
    """The logits for the token at `position`, with the prompt in one batch, then one token per decode, and the
    last `batch` tokens before `position` in one decode with logits at every row (batch 1: no batch)."""
    llm._ctx.kv_cache_clear()
    llm.n_tokens = 0
    llm.eval(tokens[:prompt_len])
    one = llama_cpp.llama_batch_init(max(batch, 1), 0, 1)
    try:
        for pos in range(prompt_len, position - batch):
            _decode(llm, one, [tokens[pos]], pos)
        rows = tokens[position - batch : position]
        _decode(llm, one, rows, position - batch)
        pointer = llama_cpp.llama_get_logits_ith(llm.ctx, len(rows) - 1)
        return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()
    finally:
        llama_cpp.llama_batch_free(one)


def _decode(llm, batch, tokens: list[int], start: int) -> None:
    batch.n_tokens = len(tokens)
    for i, token in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0] = token, start + i, 1, 0
        batch.logits[i] = True
    if llama_cpp.llama_decode(llm.ctx, batch) != 0:
        raise RuntimeError(f"llama_decode failed at {start}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="qwen2.5-coder")
    parser.add_argument("--problem", type=int, default=104, help="gsm8k problem index")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--source", choices=("model", "ngram"), default="model")
    args = parser.parse_args(argv)
    config = load_config(PACKAGED_CONFIG)
    pair = config.pair(args.pair)
    specs = {
        role: dataclasses.replace(config.model(getattr(pair, role)), n_threads=args.threads)
        for role in ("small", "large")
    }
    small, large = open_session(specs["small"]), open_session(specs["large"])
    problem = load_problems(DEFAULT_DATA)[args.problem].text
    settings = router_settings(pair, sampling=Sampling(temperature=0.0))
    plain, prompt_len = greedy_tokens(small, large, problem, settings, None)
    if args.source == "model":
        draftable, _ = draftable_tokens(small, large)
        drafter = ModelDrafter(small, draftable=draftable, k=pair.draft_tokens, p_min=pair.draft_p_min)
    else:
        drafter = NgramDrafter(k=pair.draft_tokens)
    drafted, _ = greedy_tokens(small, large, problem, settings, drafter)
    first = next((i for i, (a, b) in enumerate(zip(plain, drafted)) if a != b), None)
    report = {"problem": args.problem, "threads": args.threads, "source": args.source,
              "tokens": {"without": len(plain) - prompt_len, "with": len(drafted) - prompt_len}}  # fmt: skip
    if first is None:
        report["first_difference"] = None
        print(json.dumps(report, indent=2))
        return 0
    llm = load_llama(specs["large"], resolve_model_path(specs["large"]))
    alone = replay_logits(llm, plain, prompt_len, first, batch=1)
    top = np.argsort(alone)[::-1][:2]
    report["first_difference"] = {
        "position": first,
        "generated_before": first - prompt_len,
        "kv_cells_attended": -(-first // KV_PAD) * KV_PAD,
        "without": llm.detokenize([plain[first]]).decode(errors="replace"),
        "with": llm.detokenize([drafted[first]]).decode(errors="replace"),
        "top2_margin": float(alone[top[0]] - alone[top[1]]),
        "batch_rows": {},
    }
    for rows in (2, 3, 4):
        batched = replay_logits(llm, plain, prompt_len, first, batch=rows)
        report["first_difference"]["batch_rows"][rows] = {
            "max_abs_logit_difference": float(np.abs(batched - alone).max()),
            "argmax_same": int(np.argmax(batched)) == int(np.argmax(alone)),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
