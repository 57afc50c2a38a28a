"""llama.cpp sessions (the only module that imports llama_cpp)."""

from __future__ import annotations

# llama.cpp's shared libraries load before numpy's: in the other order, a numpy whose
# bundled OpenMP runtime differs from llama.cpp's crashed model loading (seen on a CUDA machine).
import llama_cpp  # isort: skip
from llama_cpp import Llama
from llama_cpp._internals import LlamaBatch, LlamaSampler
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

import contextlib
import ctypes
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path

import numpy as np

from glimp_cli.config import ModelSpec
from glimp_cli.drafting import DEFAULT_DRAFT_P_MIN, DEFAULT_DRAFT_TOKENS, DecodeCosts, Drafter
from glimp_cli.entropy import ENTROPY_MODES, initial_token_entropies
from glimp_cli.errors import ConfigError, ContextError, MemoryShortError, ModelFileError, RunError
from glimp_cli.fit import context_failure_message, model_failure_message
from glimp_cli.generation import Proposal, generate
from glimp_cli.memory import estimate_file
from glimp_cli.session import Counters, FirstToken, Sampling, StepOutput
from glimp_cli.sources import resolve_model_path
from glimp_cli.thinking import ThinkLayout, open_think_block, think_layout

MAX_DEFAULT_THREADS = 8
# models.yaml's KV cache types (glimp_cli.fit.KV_CACHE_TYPES) -> llama.cpp's GGML_TYPE_* (bf16 is 30 in ggml.h:
# llama_cpp exports no constant for it)
KV_CACHE_GGML_TYPES = {
    "f32": llama_cpp.GGML_TYPE_F32,
    "f16": llama_cpp.GGML_TYPE_F16,
    "bf16": 30,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
    "q4_1": llama_cpp.GGML_TYPE_Q4_1,
    "iq4_nl": llama_cpp.GGML_TYPE_IQ4_NL,
    "q5_0": llama_cpp.GGML_TYPE_Q5_0,
    "q5_1": llama_cpp.GGML_TYPE_Q5_1,
}
PIECE_BUFFER_BYTES = 256


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_THREADS))


def backend_info() -> dict[str, object]:
    """What this llama.cpp build can do (for `glimp models` and the benchmark)."""
    return {
        "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }


_LOG_CALLBACK = None  # keep a reference: llama.cpp calls it from C


def _silence_llama_logs() -> None:
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        # `slice` is a C builtin that takes three arguments and does nothing with them: no Python bytecode runs
        # when llama.cpp logs, so a Ctrl-C arriving inside llama.cpp stays pending until llama.cpp returns.
        # A Python callback would receive the KeyboardInterrupt, which ctypes prints and drops.
        _LOG_CALLBACK = llama_cpp.llama_log_callback(slice)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def load_llama(spec: ModelSpec, path: Path):
    """Load a GGUF file into a llama.cpp model + context; Ctrl-C aborts the load and raises KeyboardInterrupt."""
    _silence_llama_logs()
    threads = spec.n_threads or default_threads()
    with (
        _ctrl_c_aborts_load() as interrupted,
        _load_progress(lambda progress, user_data: not interrupted(), repack=spec.repack is not False),
    ):
        try:
            return Llama(
                model_path=str(path),
                n_ctx=spec.n_ctx,
                n_batch=spec.n_batch,
                n_ubatch=spec.n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=spec.n_gpu_layers,
                flash_attn=bool(spec.flash_attn),
                type_k=KV_CACHE_GGML_TYPES[spec.type_k],
                type_v=KV_CACHE_GGML_TYPES[spec.type_v],
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            if interrupted():
                raise KeyboardInterrupt from None  # the load was aborted for it
            raise load_failure(spec, path, reason=str(exc)) from exc


def load_failure(spec: ModelSpec, path: Path, *, reason: str) -> ModelFileError | MemoryShortError:
    """The error for a failed Llama(): the model could not be loaded, or its context (KV cache) not created."""
    gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
    if not reason.startswith("Failed to create llama_context"):
        try:
            file_bytes = path.stat().st_size
        except OSError:
            file_bytes = None
        return ModelFileError(
            model_failure_message(
                model=spec.name, path=str(path), file_bytes=file_bytes, gpu_offload=gpu_offload, reason=reason
            )
        )
    try:
        estimate = estimate_file(spec, path)
    except ModelFileError:
        estimate = None
    return MemoryShortError(
        context_failure_message(
            model=spec.name, estimate=estimate, gpu_offload=gpu_offload, flash_attn=spec.flash_attn, reason=reason
        )
    )


@contextlib.contextmanager
def _ctrl_c_aborts_load() -> Iterator[Callable[[], bool]]:
    """While llama.cpp loads, Ctrl-C is noted, not raised: it would be raised inside a llama.cpp callback,
    where ctypes drops it. Yields whether Ctrl-C was pressed; raises KeyboardInterrupt after the load if so."""
    pressed: list[int] = []
    previous = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield lambda: bool(pressed)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if pressed:  # pressed after the load's last progress report: the model is loaded, and dropped
        raise KeyboardInterrupt


@contextlib.contextmanager
def _load_progress(keep_loading: Callable[[float, object], bool], *, repack: bool = True) -> Iterator[None]:
    """Give the next Llama() a model-load progress callback (returning False aborts the load), and repacked
    CPU weights or not (llama.cpp's use_extra_bufts)."""
    # llama-cpp-python's Llama has no option for them: it takes its model params from llama_model_default_params(),
    # which is wrapped here for the duration of the load.
    callback = llama_cpp.llama_progress_callback(keep_loading)  # referenced until the load is over
    default_params = llama_cpp.llama_cpp.llama_model_default_params

    def params_with_progress():
        params = default_params()
        params.progress_callback = callback
        params.use_extra_bufts = repack
        return params

    llama_cpp.llama_cpp.llama_model_default_params = params_with_progress
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = default_params


class LlamaSession:
    """A llama.cpp context holding one model's prompt plus the shared transcript.

    Tokens are evaluated lazily: a sampled token, or text caught up from the
    other model, waits in `_tokens` until logits are next needed, then goes in
    with one llama_decode call. So a token that crosses a stop string is never
    evaluated, and nothing is ever evaluated twice.
    """

    def __init__(self, spec: ModelSpec, llm) -> None:
        self.spec = spec
        self.name = spec.name
        self._llm = llm
        self._vocab = llm._model.vocab
        self._n_ctx = llm.n_ctx()
        self._n_batch = llm.n_batch
        self._piece_buffer = ctypes.create_string_buffer(PIECE_BUFFER_BYTES)
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._eos: dict[int, bool] = {}
        self._tokens: list[int] = []  # prompt + transcript, evaluated or pending
        self._own_pending = 0  # pending tokens that this model sampled itself (not prefill)
        self._prompt_len = 0
        self._text = ""
        self._sampler = None
        self._formatter: Jinja2ChatFormatter | None = None
        self._prompt_done = False
        self._clear_cache = False
        # The hot path decodes one token at a time through this batch, not Llama.eval, whose
        # per-call Python (a KV removal and a batch refill) cost ~1.5% of a token on an H100.
        self._one = LlamaBatch(n_tokens=1, embd=0, n_seq_max=1, verbose=False)
        self._one.batch.n_seq_id[0] = 1
        self._one.batch.seq_id[0][0] = 0
        self._one.batch.logits[0] = True
        self.counters = Counters()
        self.speculate: Drafter | None = None  # drafts for the steps this model writes; None: one token per decode
        self._verify: LlamaBatch | None = None  # the batch that verifies a draft (sized for the drafter's k + 1)
        self._last_row = -1  # the last decode's logits row of the last evaluated token (a verify batch: not its last)
        # A reasoning model's prompt opens its think block; from models.yaml's think_prefix or the GGUF template.
        template = self._llm.metadata.get("tokenizer.chat_template") if spec.prompt is None else None
        self.think: ThinkLayout | None = think_layout(think_prefix=spec.think_prefix, template=template)

    entropy_modes = ENTROPY_MODES  # the full logits are at hand: both modes

    # -- prompt and transcript -------------------------------------------------

    def render_prompt(self, problem: str) -> str:
        """The model's prompt: `prompt` template from models.yaml, else its GGUF chat template rendered with
        thinking switched on; a reasoning model's prompt ends with its think block opened exactly once."""
        spec = self.spec
        if spec.prompt is not None:
            prompt = spec.prompt.replace("{problem}", problem)
        else:
            messages = ([{"role": "system", "content": spec.system}] if spec.system else []) + [
                {"role": "user", "content": problem}
            ]
            # enable_thinking: R1-Distill's template closes the think block at once without it
            prompt = self._chat_formatter()(messages=messages, enable_thinking=True).prompt
        return open_think_block(prompt, self.think)

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        """The GGUF chat template, compiled once per session (not once per problem)."""
        if self._formatter is None:
            template = self._llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise ConfigError(
                    f"model '{self.spec.name}' has no chat template in its GGUF file: "
                    "set 'prompt' for it in models.yaml"
                )
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._piece(self._llm.token_eos(), special=True),
                bos_token=self._piece(self._llm.token_bos(), special=True),
                add_generation_prompt=True,
            )
        return self._formatter

    def prompt_tokens(self, problem: str) -> list[int]:
        """The prompt's tokens, with BOS added once where the model wants it."""
        prompt = self.render_prompt(problem)
        bos_text = self._piece(self._llm.token_bos(), special=True)
        add_bos = self._llm._model.add_bos_token() and not (bos_text and prompt.startswith(bos_text))
        return self._llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def start(self, problem: str, *, sampling: Sampling, reserve: int = 0) -> None:
        tokens = self.prompt_tokens(problem)
        if len(tokens) + reserve >= self._n_ctx:
            raise ContextError(
                f"the problem does not fit model '{self.name}': its prompt is {len(tokens)} tokens, "
                f"plus {reserve} reserved for generation, and n_ctx is {self._n_ctx}; raise n_ctx in models.yaml"
            )
        self._tokens = tokens
        self._own_pending = 0
        self._prompt_len = len(tokens)
        self._text = ""
        self._prompt_done = False
        self.counters = Counters()
        # Start from an empty KV cache and re-evaluate the whole prompt, so that results never
        # depend on the previous problem: which cache cells hold a token and how it was batched
        # both change the logits slightly, and that flips greedy near-ties. The cache is cleared
        # at the first evaluation, so a model that a run never uses costs nothing.
        self._llm.n_tokens = 0
        self._clear_cache = True
        self._last_row = -1
        self._make_sampler(sampling)
        if self.speculate is not None:
            self.speculate.reset()

    def _make_sampler(self, sampling: Sampling) -> None:
        sampler = LlamaSampler()
        if sampling.temperature <= 0:
            sampler.add_greedy()
        else:
            # vLLM's order, as in the original implementation: temperature, then top-p.
            sampler.add_temp(sampling.temperature)
            sampler.add_top_p(sampling.top_p, 1)
            sampler.add_dist(sampling.seed & 0xFFFFFFFF)
        self._sampler = sampler

    @property
    def text(self) -> str:
        return self._text

    def catch_up(self, transcript: str) -> None:
        if not transcript.startswith(self._text):
            raise RunError(f"model '{self.name}': transcript diverged from its cache (internal error)")
        missing = transcript[len(self._text) :]
        if missing:
            self._tokens += self._llm.tokenize(missing.encode("utf-8"), add_bos=False, special=True)
            self._text = transcript

    def context_room(self) -> int:
        return self._n_ctx - len(self._tokens)

    def context_tokens(self) -> int:
        return len(self._tokens)

    def evaluated_tokens(self) -> int:
        """Tokens whose keys and values are in the KV cache (the rest are pending)."""
        return self._llm.n_tokens

    def held_text(self) -> str:
        """The text of the tokens after the prompt, piece by piece: what the cache holds."""
        pieces = b"".join(self._piece_bytes(t) for t in self._tokens[self._prompt_len :])
        return pieces.decode("utf-8", errors="replace")

    # -- evaluation and sampling ---------------------------------------------

    def _flush(self) -> None:
        """Evaluate pending tokens: one llama_decode call per n_batch tokens.

        Invariant: the KV cache holds exactly the first `llm.n_tokens` tokens (an interrupted
        step removes what it added), so a single token needs no KV removal before it; and when no
        token is pending, the last decode's row `_last_row` holds the last token's logits.
        """
        llm = self._llm
        start = llm.n_tokens
        n_pending = len(self._tokens) - start
        if n_pending <= 0:
            return
        if self._clear_cache:
            llm._ctx.kv_cache_clear()
            self._clear_cache = False
        if n_pending == 1:
            self._decode_one(self._tokens[start], start)
            chunks = 1
        else:
            chunks = -(-n_pending // self._n_batch)
            llm.eval(self._tokens[start:])
        self._last_row = -1
        self.counters.prefill_tokens += n_pending - self._own_pending
        self.counters.evaluated_tokens += n_pending
        if self._prompt_done:
            self.counters.decode_calls += chunks
        self._prompt_done = True
        self._own_pending = 0

    def _decode_one(self, token: int, position: int) -> None:
        """Evaluate one token at `position` (the hot path of generation)."""
        batch = self._one.batch
        batch.n_tokens = 1
        batch.token[0] = token
        batch.pos[0] = position
        code = llama_cpp.llama_decode(self._llm.ctx, batch)
        if code != 0:
            raise RunError(f"model '{self.name}': llama_decode returned {code} at position {position}")
        llm = self._llm
        llm.input_ids[position] = token  # keep the Llama object consistent for llama-cpp-python's own calls
        llm.n_tokens = position + 1

    def next_token_logits(self) -> np.ndarray:
        self._flush()
        pointer = llama_cpp.llama_get_logits_ith(self._llm.ctx, self._last_row)
        return np.ctypeslib.as_array(pointer, shape=(self._llm.n_vocab(),)).copy()

    def sample(self) -> int:
        self._flush()
        return llama_cpp.llama_sampler_sample(self._sampler.sampler, self._llm.ctx, self._last_row)

    def _piece(self, token: int, *, special: bool = True) -> str:
        return self._piece_bytes(token, special=special).decode("utf-8", errors="replace")

    def _piece_bytes(self, token: int, *, special: bool = True) -> bytes:
        """A token's text; special tokens too (`<|im_start|>`), so that the transcript holds every token the
        cache holds, and the other model, which tokenizes the transcript with special tokens on, reads the same."""
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:  # memoized: this runs once per generated token
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buffer, PIECE_BUFFER_BYTES, 0, special)
            piece = self._pieces[key] = self._piece_buffer.raw[: max(n, 0)]
        return piece

    def token_text(self, token: int) -> str:
        return self._piece(token)

    def is_eos(self, token: int) -> bool:
        eos = self._eos.get(token)
        if eos is None:
            eos = self._eos[token] = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
        return eos

    def probe(self, *, top_k: int) -> FirstToken:
        logits = self.next_token_logits()
        token = self.sample()
        return FirstToken(token=token, text=self._piece(token), entropies=initial_token_entropies(logits, top_k=top_k))

    # -- generation -----------------------------------------------------------

    def generate_step(
        self, *, first_token: int | None, stops: Sequence[str], max_tokens: int
    ) -> Generator[str, None, StepOutput]:
        """Sample until a stop string, EOS or max_tokens; the cache ends exactly at the returned text."""
        if self.speculate is not None:
            source = VerifiedDrafts(self, first_token, drafter=self.speculate)
        else:
            source = SampledTokens(self, first_token)
        return generate(source, stops=stops, max_tokens=max_tokens)

    def _append_own(self, token: int) -> None:
        self._tokens.append(token)
        self._own_pending += 1

    def _verify_batch(self, n_tokens: int) -> LlamaBatch:
        """A batch for `n_tokens` tokens of sequence 0, logits at every position (allocated once, grown if needed)."""
        if self._verify is None or self._verify._n_tokens < n_tokens:
            self._verify = LlamaBatch(n_tokens=n_tokens, embd=0, n_seq_max=1, verbose=False)
            batch = self._verify.batch
            for i in range(n_tokens):
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
        return self._verify

    def _cut(self, length: int) -> None:
        """Keep the first `length` tokens; the cache keeps one fewer when it held them all, so that the last
        kept token is pending again (the logits of the last decode belong to a later token)."""
        del self._tokens[length:]
        llm = self._llm
        if llm.n_tokens >= length:
            keep = max(length - 1, 0)
            llm._ctx.kv_cache_seq_rm(-1, keep, -1)
            llm.n_tokens = keep
        self._own_pending = min(self._own_pending, len(self._tokens) - llm.n_tokens)


class LlamaStep:
    """What every llama.cpp token source shares: keeping tokens or text, commit, roll-back."""

    def __init__(self, session: LlamaSession) -> None:
        self.session = session
        self._tokens_before, self._text_before, self._own_before = (
            len(session._tokens),
            session._text,
            session._own_pending,
        )

    def keep_text(self, text: bytes) -> None:
        """Text cut from a token at a stop string: re-tokenized, and evaluated when next needed."""
        session = self.session
        session._tokens += session._llm.tokenize(text, add_bos=False, special=True)

    def commit(self, out: StepOutput) -> None:
        self.session._text += out.text
        self.session.counters.generated_tokens += out.tokens

    def rollback(self) -> None:
        session, before = self.session, self._tokens_before
        del session._tokens[before:]
        session._text, session._own_pending = self._text_before, self._own_before
        llm = session._llm
        if llm.n_tokens > before:
            # The step's decodes overwrote the logits: the token before the step goes back to
            # pending, so they are computed again when next needed.
            keep = before - 1
            llm.n_tokens = keep
            llm._ctx.kv_cache_seq_rm(-1, keep, -1)
            session._own_pending = 0


class SampledTokens(LlamaStep):
    """One token per decode from the session's own sampler; the first may be a probe's token."""

    def __init__(self, session: LlamaSession, first_token: int | None) -> None:
        super().__init__(session)
        self._next = first_token
        self._token = -1

    def propose(self, limit: int) -> Proposal:
        session = self.session
        token = session.sample() if self._next is None else self._next
        self._next = None
        if session.is_eos(token):
            return Proposal((), eos=True)
        self._token = token
        return Proposal((session._piece_bytes(token),))

    def settle(self, kept: int, tail: bytes) -> None:
        if kept:
            self.session._append_own(self._token)
        elif tail:
            self.keep_text(tail)


class VerifiedDrafts(LlamaStep):
    """Drafted tokens verified by the model in one decode: up to k + 1 tokens per llama_decode call.

    When one token is pending (the last one sampled), the batch is [that token, d1..dk] with logits at every
    position. The model's own sampler chain samples the rows in turn (accepting each token into the chain, as
    one token per decode would) and the run ends at the first sample that differs from the draft, or with the
    bonus token after k accepted ones (llama.cpp's scheme). So the tokens are drawn from the model's own
    distributions, in the same order from its RNG; at temperature 0 the text is its greedy text, exactly where
    a batch's rows equal one token's logits (flash_attn on, repack off on the CPU). Rejected draft positions
    leave the cache at once; the last sampled token stays pending, as after sample(). Several pending tokens
    (a prompt, a catch-up) are evaluated as without a draft first, so that they are batched the same way.
    """

    def __init__(self, session: LlamaSession, first_token: int | None, *, drafter: Drafter) -> None:
        super().__init__(session)
        self._drafter = drafter
        drafter.begin_step(session._text, context_length=len(session._tokens))
        self._next = first_token
        self._proposed: list[int] = []  # the last proposal's tokens: its accepted drafts, then the new token
        self._in_cache = 0  # how many of them the cache holds (the accepted drafts)
        self._start = 0  # the position of the verify batch's first token
        self._batched = False  # a verify batch was decoded in this step: the logits are no longer the step's start

    def propose(self, limit: int) -> Proposal:
        session = self.session
        self._proposed, self._in_cache = [], 0
        if self._next is not None:
            token, self._next = self._next, None
            return self._single(token)
        room = min(limit - 1, session._n_ctx - len(session._tokens))  # the last sampled token, then the drafts
        one_pending = len(session._tokens) - session._llm.n_tokens == 1
        draft = self._drafter.draft(session._tokens, limit=room) if one_pending and room > 0 else []
        if not draft:
            return self._single(session.sample())
        return self._verify(draft[:room])

    def _single(self, token: int) -> Proposal:
        """One token, sampled as SampledTokens samples it (no draft, or the probe's token)."""
        session = self.session
        if session.is_eos(token):
            return Proposal((), eos=True)
        self._proposed = [token]
        return Proposal((session._piece_bytes(token),))

    def _verify(self, draft: list[int]) -> Proposal:
        session, llm = self.session, self.session._llm
        start = self._start = llm.n_tokens  # the pending token's position, the batch's first
        tokens = [session._tokens[start], *draft]
        batch = session._verify_batch(len(tokens)).batch
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = start + i
        if session._clear_cache:  # a one-token prompt
            llm._ctx.kv_cache_clear()
            session._clear_cache = False
        self._batched = True
        code = llama_cpp.llama_decode(llm.ctx, batch)
        if code != 0:
            llm._ctx.kv_cache_seq_rm(-1, start, -1)
            raise RunError(f"model '{session.name}': llama_decode returned {code} verifying a draft at {start}")
        llm.input_ids[start : start + len(tokens)] = tokens
        llm.n_tokens = start + len(tokens)
        counters = session.counters
        counters.evaluated_tokens += len(tokens)
        counters.prefill_tokens += 1 - session._own_pending
        counters.decode_calls += 1 if session._prompt_done else 0
        counters.verify_calls += 1
        counters.drafted_tokens += len(draft)
        session._prompt_done = True
        session._own_pending = 0

        sampler, ctx = session._sampler.sampler, llm.ctx
        accepted = 0
        for row in range(len(tokens)):
            token = llama_cpp.llama_sampler_sample(sampler, ctx, row)
            if row < len(draft) and token == draft[row] and not session.is_eos(token):
                accepted += 1
            else:
                break
        counters.accepted_tokens += accepted
        keep = start + 1 + accepted
        if keep < llm.n_tokens:  # the rejected drafts leave the cache
            llm._ctx.kv_cache_seq_rm(-1, keep, -1)
            llm.n_tokens = keep
        session._last_row = accepted  # the last accepted token's row (read after EOS)
        self._in_cache = accepted
        eos = session.is_eos(token)
        self._proposed = draft[:accepted] if eos else [*draft[:accepted], token]
        return Proposal(tuple(session._piece_bytes(t) for t in self._proposed), eos=eos)

    def settle(self, kept: int, tail: bytes) -> None:
        session, llm = self.session, self.session._llm
        kept_tokens = self._proposed[:kept]
        session._tokens += kept_tokens[: self._in_cache]  # accepted drafts: already evaluated
        if kept > self._in_cache:
            session._append_own(kept_tokens[-1])  # the newly sampled token: pending
        elif self._in_cache and (kept < len(self._proposed) or tail):
            # A stop string inside the accepted run: the cache drops the tokens after it. As without a draft, a
            # token cut at the stop leaves the last kept token evaluated (its logits are at its row), and a
            # token that ends at the stop stays pending: then later evaluations are batched as without a draft.
            held = len(session._tokens) - (0 if tail else 1)
            llm._ctx.kv_cache_seq_rm(-1, held, -1)
            llm.n_tokens = held
            session._last_row = held - 1 - self._start
            session._own_pending = len(session._tokens) - held
        if tail:
            self.keep_text(tail)

    def rollback(self) -> None:
        super().rollback()
        session = self.session
        if self._batched:
            # As in LlamaStep.rollback, and also when the cache did not grow: a verify batch overwrote the logits,
            # and an interrupted one may have left draft positions past llm.n_tokens.
            llm = session._llm
            keep = min(llm.n_tokens, self._tokens_before - 1)
            llm._ctx.kv_cache_seq_rm(-1, keep, -1)
            llm.n_tokens = keep
            session._own_pending = 0
        self._drafter.truncate(len(session._tokens))
        self._drafter.end_step(None)

    def commit(self, out: StepOutput) -> None:
        super().commit(out)
        self._drafter.end_step(out.text)


ORDINARY_ATTRS = llama_cpp.LLAMA_TOKEN_ATTR_NORMAL | llama_cpp.LLAMA_TOKEN_ATTR_BYTE
# user-defined tokens are text too (Gemma's runs of newlines and spaces, Qwen's <think>); control, unused and
# unknown tokens never are
DRAFTABLE_ATTRS = ORDINARY_ATTRS | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED


def draftable_tokens(small: LlamaSession, large: LlamaSession) -> tuple[np.ndarray | None, str | None]:
    """The token ids the small model may draft for the large one, or None and how the vocabularies differ.

    An id is draftable where both models hold it as a text token (ordinary, byte or user-defined, not control
    or end-of-generation) with the same text. An id that is ordinary in both with different texts means the
    vocabularies disagree: then nothing is drafted.
    """
    vocabs = small._vocab, large._vocab
    sizes = [llama_cpp.llama_vocab_n_tokens(vocab) for vocab in vocabs]
    draftable = np.zeros(min(sizes), dtype=bool)
    for token in range(len(draftable)):
        attrs = [llama_cpp.llama_vocab_get_attr(vocab, token) for vocab in vocabs]
        if not (attrs[0] & DRAFTABLE_ATTRS and attrs[1] & DRAFTABLE_ATTRS):
            continue
        texts = [llama_cpp.llama_vocab_get_text(vocab, token) for vocab in vocabs]
        if texts[0] == texts[1]:
            draftable[token] = not any(llama_cpp.llama_vocab_is_eog(vocab, token) for vocab in vocabs)
        elif attrs[0] & ORDINARY_ATTRS and attrs[1] & ORDINARY_ATTRS:
            shown = [text.decode("utf-8", errors="replace") for text in texts]
            return None, (
                f"the vocabularies differ: token {token} is {shown[0]!r} in '{small.name}' and {shown[1]!r} in "
                f"'{large.name}'"
            )
    if not draftable.any():
        return None, f"'{small.name}' and '{large.name}' share no text token"
    return draftable, None


class ModelDrafter:
    """Greedy drafts from a model whose vocabulary agrees with the target's: the pair's small model, whose cache
    already holds the shared transcript, so a draft costs its decodes and no set-up.

    At a step's start its session catches up to the transcript; while the target writes, it follows the step's
    tokens (the target's ids are its ids) and drafts from its own cache by argmax, not by its sampler (whose
    random state belongs to its own steps). A draft stops at a token that is not draftable (draftable_tokens:
    control and end-of-generation tokens never are) or whose probability is below p_min. At the step's end its
    cache keeps the drafts the target kept, as far as they equal the step's text tokenized as a catch-up would
    tokenize it, so its next probe sees the tokens it would have seen without drafts.
    """

    def __init__(
        self,
        session: LlamaSession,
        *,
        draftable: np.ndarray,
        k: int = DEFAULT_DRAFT_TOKENS,
        p_min: float = DEFAULT_DRAFT_P_MIN,
    ) -> None:
        self.session = session
        self.k = k
        self.p_min = p_min
        self._draftable = draftable
        self._anchor: tuple[int, int] | None = None  # (its tokens, the target's tokens) at the step's start

    def reset(self) -> None:
        self._anchor = None  # the router starts the small session itself

    def truncate(self, length: int) -> None:
        pass  # each draft follows the target's context by its common prefix

    def begin_step(self, transcript: str, *, context_length: int) -> None:
        session = self.session
        session.catch_up(transcript)
        self._anchor = len(session._tokens), context_length

    def draft(self, context: Sequence[int], *, limit: int) -> list[int]:
        count = min(self.k, limit)
        if count <= 0 or self._anchor is None:
            return []
        session = self.session
        ours_at, theirs_at = self._anchor
        self._follow(ours_at, list(context[theirs_at:]))
        if session.context_tokens() - session.evaluated_tokens() > 1:
            # Batched as the target batched them (a prompt or a catch-up, then the token sampled after it alone):
            # a long batch's rows can differ slightly from one token's, and then so would the greedy drafts.
            last = session._tokens.pop()
            session._flush()
            session._tokens.append(last)
        drafts: list[int] = []
        while len(drafts) < count:
            logits = session.next_token_logits()
            token = int(np.argmax(logits))
            if token >= len(self._draftable) or not self._draftable[token]:
                break
            if self.p_min > 0 and 1.0 / float(np.exp(logits - logits[token]).sum()) < self.p_min:
                break
            drafts.append(token)
            session._append_own(token)
        return drafts

    def end_step(self, text: str | None) -> None:
        if self._anchor is None:
            return
        session, (ours_at, _) = self.session, self._anchor
        self._anchor = None
        if text is None:  # rolled back: back to the step's start
            self._follow(ours_at, [])
            return
        self._follow(ours_at, session._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        session._text += text

    def _follow(self, start: int, tokens: list[int]) -> None:
        """Make its tokens from `start` on equal `tokens`, keeping the common prefix (evaluated or not)."""
        session = self.session
        ours = session._tokens
        common, limit = 0, min(len(ours) - start, len(tokens))
        while common < limit and ours[start + common] == tokens[common]:
            common += 1
        if start + common < len(ours):
            session._cut(start + common)
        session._tokens += tokens[common:]


COST_CONTEXT_TOKENS = 128  # the scratch context the decode costs are measured after (a prompt's length)
COST_REPEATS = 5  # decodes timed for each figure; their median is kept


def decode_costs(small: LlamaSession | None, large: LlamaSession, *, k: int) -> DecodeCosts:
    """The seconds of a draft cycle's decodes on these models (speculate: auto), measured on a scratch context.

    Called before a session starts: the sessions' caches are empty before and after (cleared at the end).
    """
    target_one, target_batch = _decode_seconds(large, batches=(1, k + 1))
    draft_one = _decode_seconds(small, batches=(1,))[0] if small is not None else None
    return DecodeCosts(target_one_s=target_one, target_batch_s=target_batch, draft_one_s=draft_one, k=k)


def _decode_seconds(session: LlamaSession, *, batches: tuple[int, ...]) -> list[float]:
    """Median seconds of one llama_decode of each of `batches` tokens (logits at every row, as a verify batch)
    after one COST_CONTEXT_TOKENS-token context, prefilled once for all of them; the cache is empty afterwards."""
    llm = session._llm
    token = int(llama_cpp.llama_vocab_bos(session._vocab))
    token = token if token >= 0 else 0
    start = min(COST_CONTEXT_TOKENS, session._n_ctx - max(batches) - 1)
    llm._ctx.kv_cache_clear()
    llm.n_tokens = 0
    medians = []
    try:
        llm.eval([token] * start)
        for batch in batches:
            scratch = session._verify_batch(batch).batch
            scratch.n_tokens = batch
            seconds = []
            for _ in range(COST_REPEATS):
                for i in range(batch):
                    scratch.token[i] = token
                    scratch.pos[i] = start + i
                began = time.perf_counter()
                code = llama_cpp.llama_decode(llm.ctx, scratch)
                seconds.append(time.perf_counter() - began)
                llm._ctx.kv_cache_seq_rm(-1, start, -1)
                if code != 0:
                    raise RunError(f"model '{session.name}': llama_decode returned {code} measuring decode costs")
            medians.append(statistics.median(seconds))
    finally:
        llm._ctx.kv_cache_clear()
        llm.n_tokens = 0
        session._last_row = -1
    return medians


def open_session(spec: ModelSpec, *, download: bool = False) -> LlamaSession:
    """Resolve a model's file, load it, and wrap it in a session."""
    return LlamaSession(spec, load_llama(spec, resolve_model_path(spec, download=download)))
