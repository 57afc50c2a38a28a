"""Sessions on OpenAI-compatible servers: vLLM, SGLang, llama.cpp's llama-server, llama_cpp.server.

A remote model holds no cache here: every request sends its whole text, prompt + transcript, and the
server's prefix cache does the work of the in-process KV cache (the cached-token count it reports goes to
Counters.cached_tokens). The choices, per the engines' documented behaviour:

- Text completions (`POST /v1/completions`) with the prompt rendered here, from models.yaml's `prompt` or
  its `chat_template` file (Jinja, rendered as llama-cpp-python renders a GGUF template, thinking on). They
  work the same on vLLM, SGLang, llama-server and llama_cpp.server; a chat request that continues the final
  assistant message would need vLLM's `continue_final_message`, which llama_cpp.server lacks. The template is
  rendered with an empty `bos_token`: the servers add BOS as they tokenize a completion prompt.
- The probe is one request for one token with the top-k log-probabilities (`logprobs: k`, k <= 20: vLLM's
  default cap). Its entropy is the top-k entropy over those log-probs, renormalised; vLLM (by default),
  llama-server and llama_cpp.server return them from the raw logits (a plain softmax), SGLang after the
  temperature unless started with SGLANG_RETURN_ORIGINAL_LOGPROB=1: glimp multiplies those by the
  temperature (`tempered_logprobs`), which recovers the raw top-k distribution exactly.
- The probe's token is kept: the step continues from prompt + transcript + its text.
- Steps are streamed (server-sent events). vLLM and SGLang get the stop strings and say which one ended the
  text (`stop_reason`, `matched_stop`), which the server leaves out: glimp appends it, so the transcript is
  exact. The llama.cpp servers do not say whether a stop string or the end-of-generation token ended a
  completion ("stop" both): they get no stop strings; glimp scans the stream itself (as for in-process
  models) and closes it at the first stop string.
- The in-process sampler is temperature then top-p, nothing else: the llama.cpp servers (top_k 40, min_p
  0.05 by default; llama_cpp.server also repeat_penalty 1.1) and vLLM/SGLang (the model's generation_config)
  are sent the neutral values of their other samplers.
- Every request has a timeout (models.yaml `timeout_s`: the longest the server may stay silent) and the
  openai client's bounded retries with backoff for connection errors, timeouts and 5xx; then one RemoteError
  line naming the server and the model.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import numpy as np
import openai
from jinja2.sandbox import ImmutableSandboxedEnvironment

try:  # the HTTP library under the openai client, whose errors a broken stream raises: httpx2 from openai 3
    import httpx2 as httpx
except ImportError:
    import httpx

from glimp_cli.config import ModelSpec
from glimp_cli.entropy import topk_entropy
from glimp_cli.errors import ConfigError, ContextError, RunError
from glimp_cli.generation import Proposal, generate
from glimp_cli.session import Counters, FirstToken, Sampling, StepOutput
from glimp_cli.thinking import ThinkLayout, open_think_block, think_layout

DEFAULT_MAX_RETRIES = 2  # the openai client's retries (exponential backoff from 0.5 s) for transient failures
MODELS_TIMEOUT_S = 5.0  # `glimp models`' reachability check
CONNECT_TIMEOUT_S = 10.0
MAX_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs; the OpenAI API's limit
# /v1/models' owned_by -> engine
ENGINES = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama-server", "me": "llama_cpp.server"}
# llama_cpp.server ends a stream early ([DONE]) when another request waits for its model, unless told not to
INTERRUPTED_HINT = (
    "(llama_cpp.server ends a stream when another request comes in: start it with --interrupt_requests False "
    "to run problems in parallel; or the server stopped or restarted?)"
)
SERVER_STOPS = ("vllm", "sglang")  # engines that say which stop string ended a completion
TEMPERED_LOGPROBS = ("sglang",)  # engines whose log-probs are after temperature by default
OPENAI_COMPLETION_FIELDS = frozenset(
    ("model", "prompt", "max_tokens", "logprobs", "temperature", "top_p", "seed", "stop", "stream", "stream_options")
)
# The neutral values of the samplers besides temperature and top-p, by engine (their defaults differ).
NEUTRAL_SAMPLING = {
    "vllm": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
    "sglang": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
    "llama-server": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
    "llama_cpp.server": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
}


class RemoteError(RunError):
    """A server failed (unreachable, too slow, an HTTP error, a broken stream); names the server and the model."""


class MalformedResponse(ValueError):
    """A response or stream chunk that does not have the shape of a completion."""


# -- request bodies and response parsing (pure: tested against recorded responses of each engine) ------------


def engine_of(models_listing: Mapping[str, Any], model: str) -> str:
    """The engine behind a server, from its /v1/models listing (owned_by), or "openai-compatible"."""
    for card in models_listing.get("data") or ():
        if isinstance(card, Mapping) and card.get("id") == model:
            return ENGINES.get(str(card.get("owned_by")), "openai-compatible")
    return "openai-compatible"


def served_models(models_listing: Mapping[str, Any]) -> list[str]:
    return [str(card.get("id")) for card in models_listing.get("data") or () if isinstance(card, Mapping)]


def context_length(models_listing: Mapping[str, Any], model: str) -> int | None:
    """The model's context window where the server lists it (vLLM and SGLang: max_model_len)."""
    for card in models_listing.get("data") or ():
        if isinstance(card, Mapping) and card.get("id") == model and isinstance(card.get("max_model_len"), int):
            return card["max_model_len"]
    return None


def probe_body(prompt: str, *, model: str, sampling: Sampling, top_k: int, engine: str) -> dict[str, Any]:
    """One token with its top-k log-probabilities."""
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": 1,
        "logprobs": top_k,
        **_sampling_fields(sampling, engine),
    }


def step_body(
    prompt: str, *, model: str, sampling: Sampling, stops: Sequence[str], max_tokens: int, engine: str
) -> dict[str, Any]:
    """A streamed step; the stop strings only to the engines that say which one matched."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **_sampling_fields(sampling, engine),
    }
    if engine in SERVER_STOPS and stops:
        body["stop"] = list(stops)
    return body


def _sampling_fields(sampling: Sampling, engine: str) -> dict[str, Any]:
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        **NEUTRAL_SAMPLING.get(engine, {}),
    }


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None  # prompt tokens served from the server's prefix cache, where it says


@dataclass(frozen=True)
class Chunk:
    """One completion response or stream chunk, in glimp's terms."""

    text: str
    finish: str | None  # None: more follows; "stop" (a stop string: `stop`), "eos", "length"
    stop: str | None = None
    usage: Usage | None = None
    top_logprobs: tuple[float, ...] = ()  # the first token's top log-probs (a probe)


def parse_chunk(data: Any) -> Chunk:
    """A /v1/completions response or stream chunk of any of the engines; MalformedResponse if it is none."""
    if not isinstance(data, Mapping):
        raise MalformedResponse(f"expected a JSON object, got {type(data).__name__}")
    if data.get("error") is not None:  # an error sent inside a stream (vLLM, SGLang)
        error = data["error"]
        message = error.get("message") if isinstance(error, Mapping) else error
        raise MalformedResponse(f"the server reported an error: {message}")
    usage = parse_usage(data)
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise MalformedResponse("no 'choices' list")
    if not choices:  # the usage chunk that ends a stream with include_usage
        return Chunk(text="", finish=None, usage=usage)
    choice = choices[0]
    text = choice.get("text") if isinstance(choice, Mapping) else None
    if not isinstance(text, str):
        raise MalformedResponse("a choice without 'text'")
    finish, stop = finish_of(choice)
    return Chunk(text=text, finish=finish, stop=stop, usage=usage, top_logprobs=top_logprobs_of(choice))


def finish_of(choice: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(finish, stop string): why a completion ended, from finish_reason and the engine's matched stop."""
    reason = choice.get("finish_reason")
    if reason is None:
        return None, None
    if reason == "length":
        return "length", None
    if reason != "stop":
        raise MalformedResponse(f"finish_reason {reason!r}")
    # vLLM: stop_reason, SGLang: matched_stop; a string is the stop string, a number a stop token id
    matched = choice.get("stop_reason", choice.get("matched_stop"))
    if isinstance(matched, str) and matched:
        return "stop", matched
    return "eos", None  # no stop string sent, or none matched: the end-of-generation token


def top_logprobs_of(choice: Mapping[str, Any]) -> tuple[float, ...]:
    """The first generated token's top log-probs: the OpenAI completions shape (`top_logprobs`, a list of
    {token: logprob}: vLLM, SGLang, llama_cpp.server) or the chat shape (`content`: llama-server)."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, Mapping):
        return ()
    top = logprobs.get("top_logprobs")
    if isinstance(top, list) and top and isinstance(top[0], Mapping):
        return tuple(float(v) for v in top[0].values())
    content = logprobs.get("content")
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        return tuple(float(t["logprob"]) for t in content[0].get("top_logprobs") or () if "logprob" in t)
    return ()


def parse_usage(data: Mapping[str, Any]) -> Usage | None:
    """Token counts: `usage` (+ prompt_tokens_details.cached_tokens), or llama-server's timings.cache_n."""
    usage = data.get("usage")
    if not isinstance(usage, Mapping):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    timings = data.get("timings")
    if cached is None and isinstance(timings, Mapping):
        cached = timings.get("cache_n")
    try:
        return Usage(
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=None if cached is None else int(cached),
        )
    except (KeyError, TypeError, ValueError):
        raise MalformedResponse(f"usage without token counts: {dict(usage)}") from None


def probe_entropy(top_logprobs: Sequence[float], *, top_k: int, temperature: float, tempered: bool) -> float:
    """Top-k entropy (nats) from a server's top log-probs, renormalised; `tempered`: they are after temperature
    (SGLang), so they are scaled back by it (a shift per token cancels in the renormalisation)."""
    values = np.asarray(top_logprobs, dtype=np.float64)
    if tempered and temperature > 0:
        values = values * temperature
    # vLLM and llama_cpp.server add the sampled token to the top-k: it may be outside them
    return topk_entropy(values, k=top_k)


def render_chat_template(template: str, *, messages: list[dict[str, str]]) -> str:
    """A chat template rendered as llama-cpp-python's Jinja2ChatFormatter renders one (Transformers' Jinja
    environment), with the generation prompt and thinking on; bos_token empty (the server adds BOS)."""

    def raise_exception(message: str):
        raise ValueError(message)

    environment = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: (
        json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    )
    return environment.from_string(template).render(
        messages=messages,
        bos_token="",
        eos_token="",
        add_generation_prompt=True,
        enable_thinking=True,
        raise_exception=raise_exception,
        strftime_now=lambda f: datetime.now().strftime(f),
    )


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """Pass-through for Hugging Face's {% generation %} chat-template tag."""

    tags = {"generation"}

    def parse(self, parser):
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


# -- the session ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeToken:
    """A probe's token: its text (the server's detokenization), or the end of generation."""

    text: str
    eos: bool = False


class RemoteSession:
    """One model on an OpenAI-compatible server: its prompt plus the shared transcript, sent whole with each
    request (the server's prefix cache holds what it has seen)."""

    entropy_modes = ("topk",)  # the server returns at most the top-20 log-probs, not the whole vocabulary

    def __init__(self, spec: ModelSpec, *, client: openai.OpenAI, engine: str, n_ctx: int, template: str | None):
        self.spec = spec
        self.name = spec.name
        self.engine = engine
        self._client = client
        self._n_ctx = n_ctx
        self._template = template
        tempered = spec.tempered_logprobs
        self._tempered = engine in TEMPERED_LOGPROBS if tempered is None else tempered
        self.think: ThinkLayout | None = think_layout(
            think_prefix=spec.think_prefix, template=template if spec.prompt is None else None
        )
        self.counters = Counters()
        self._prompt = ""
        self._text = ""
        self._sampling = Sampling()
        self._counted = (0, 0)  # (characters of prompt + transcript, their tokens) from the last usage

    # -- prompt and transcript -------------------------------------------------------------------------------

    def render_prompt(self, problem: str) -> str:
        """models.yaml's `prompt`, else its chat template rendered with thinking on; a reasoning model's prompt
        ends with its think block opened exactly once (as LlamaSession.render_prompt)."""
        spec = self.spec
        if spec.prompt is not None:
            prompt = spec.prompt.replace("{problem}", problem)
        else:
            messages = ([{"role": "system", "content": spec.system}] if spec.system else []) + [
                {"role": "user", "content": problem}
            ]
            try:
                prompt = render_chat_template(self._template or "", messages=messages)
            except (jinja2.TemplateError, ValueError) as exc:
                raise ConfigError(f"model '{self.name}': its chat_template {spec.chat_template} fails: {exc}") from None
        return open_think_block(prompt, self.think)

    def start(self, problem: str, *, sampling: Sampling, reserve: int = 0) -> None:
        # The prompt's length is known once the server has tokenized it: a prompt too long for its context is
        # the server's 400, raised as a ContextError.
        self._prompt = self.render_prompt(problem)
        self._text = ""
        self._sampling = sampling
        self._counted = (0, 0)
        self.counters = Counters()

    @property
    def text(self) -> str:
        return self._text

    def catch_up(self, transcript: str) -> None:
        if not transcript.startswith(self._text):
            raise RunError(f"model '{self.name}': transcript diverged from its text (internal error)")
        self._text = transcript

    def context_tokens(self) -> int:
        """Tokens of prompt + transcript: the server's count of what it has seen, plus the UTF-8 bytes of the
        text it has not (an upper bound on their tokens, bar BOS)."""
        chars, tokens = self._counted
        unseen = (self._prompt + self._text)[chars:]
        return tokens + len(unseen.encode("utf-8")) + (1 if chars == 0 else 0)

    def context_room(self) -> int:
        return self._n_ctx - self.context_tokens()

    def _count(self, usage: Usage | None, *, text: str) -> None:
        """Record a response's usage: `text` (prompt + transcript, + what was generated) is so many tokens."""
        self.counters.decode_calls += 1
        if usage is None:
            return
        self._counted = (len(text), usage.prompt_tokens + usage.completion_tokens)
        cached = usage.cached_tokens or 0
        if usage.cached_tokens is not None:  # else the server does not say (llama_cpp.server): it stays None
            self.counters.cached_tokens = (self.counters.cached_tokens or 0) + cached
        self.counters.prefill_tokens += usage.prompt_tokens - cached
        self.counters.evaluated_tokens += usage.prompt_tokens - cached + usage.completion_tokens

    # -- requests ----------------------------------------------------------------------------------------------

    def probe(self, *, top_k: int) -> FirstToken:
        prompt = self._prompt + self._text
        body = probe_body(
            prompt,
            model=self.spec.model,
            sampling=self._sampling,
            top_k=min(top_k, MAX_TOP_LOGPROBS),
            engine=self.engine,
        )
        with self._failures():
            response = self._create(body)
            chunk = parse_chunk(response.to_dict())
            if chunk.finish is None:
                raise MalformedResponse("a one-token completion without finish_reason")
        eos = chunk.finish == "eos"
        if not chunk.top_logprobs and not eos:
            raise RemoteError(
                f"model '{self.name}': server {self.spec.url} returned no log-probs for the probe "
                f"(engine: {self.engine}); glimp needs `logprobs` on /v1/completions"
            )
        # the token is not part of the transcript: only the prompt was counted
        self._count(replace(chunk.usage, completion_tokens=0) if chunk.usage else None, text=prompt)
        entropy = (
            probe_entropy(
                chunk.top_logprobs, top_k=top_k, temperature=self._sampling.temperature, tempered=self._tempered
            )
            if chunk.top_logprobs
            else 0.0
        )
        return FirstToken(token=ProbeToken(text=chunk.text, eos=eos), text=chunk.text, entropies={"topk": entropy})

    def generate_step(
        self, *, first_token: ProbeToken | None, stops: Sequence[str], max_tokens: int
    ) -> Generator[str, None, StepOutput]:
        """Stream a step from the server, starting with a probe's token if given; the transcript ends exactly
        at the returned text (the stop string included)."""
        source = StreamedText(self, first_token, stops=stops)
        out = yield from generate(source, stops=stops, max_tokens=max_tokens)
        if source.server_tokens is not None:  # the server's count, where the stream ended on its own
            out = replace(out, tokens=source.server_tokens)
        self.counters.generated_tokens += out.tokens
        return out

    def open_stream(self, prompt: str, *, stops: Sequence[str], max_tokens: int) -> Iterator[Chunk]:
        """The chunks of a streamed completion; RemoteError for a failure, a malformed or a cut-off stream."""
        body = step_body(
            prompt,
            model=self.spec.model,
            sampling=self._sampling,
            stops=stops,
            max_tokens=max_tokens,
            engine=self.engine,
        )
        with self._failures():
            stream = self._create(body)
        try:
            finished = False
            while True:
                with self._failures(streaming=True):
                    try:
                        event = next(stream)
                    except StopIteration:
                        break
                    chunk = parse_chunk(event.to_dict())
                finished = finished or chunk.finish is not None
                yield chunk
            if not finished:
                raise RemoteError(
                    f"model '{self.name}': the stream from server {self.spec.url} ended before the completion did "
                    + (INTERRUPTED_HINT if self.engine == "llama_cpp.server" else "(the server stopped or restarted?)")
                )
        finally:
            stream.close()

    def _create(self, body: dict[str, Any]):
        """POST /v1/completions: the OpenAI fields as the client's arguments, the engine's own in extra_body."""
        standard = {key: value for key, value in body.items() if key in OPENAI_COMPLETION_FIELDS}
        extra = {key: value for key, value in body.items() if key not in OPENAI_COMPLETION_FIELDS}
        return self._client.completions.create(**standard, extra_body=extra or None)

    @contextlib.contextmanager
    def _failures(self, *, streaming: bool = False) -> Iterator[None]:
        """One line for any failure of a request to the server, naming it and the model; `streaming`: while a
        stream is read (the openai client reports a connection lost mid-stream as a connection error)."""
        spec = self.spec
        where = f"model '{self.name}' ('{spec.model}' at {spec.url})"
        try:
            yield
        except openai.APITimeoutError:
            if streaming:
                raise RemoteError(
                    f"{where}: the stream stalled for more than {spec.timeout_s:g} s (timeout_s in models.yaml)"
                ) from None
            raise RemoteError(
                f"{where}: no answer within {spec.timeout_s:g} s (timeout_s in models.yaml), "
                f"{DEFAULT_MAX_RETRIES + 1} tries"
            ) from None
        except openai.APIConnectionError as exc:
            if streaming:
                raise RemoteError(
                    f"{where}: the stream broke off ({_cause(exc)}; the server stopped or restarted?)"
                ) from None
            raise RemoteError(f"{where}: cannot connect ({_cause(exc)}), {DEFAULT_MAX_RETRIES + 1} tries") from None
        except openai.NotFoundError as exc:
            raise RemoteError(
                f"{where}: HTTP 404: {_message(exc)}: is '{spec.model}' the model name the server serves "
                f"(GET {spec.url.rstrip('/')}/models lists them)?"
            ) from None
        except openai.APIStatusError as exc:
            message = _message(exc)
            if exc.status_code == 400 and "context" in message.lower():
                raise ContextError(f"{where}: the problem does not fit its context: {message}") from None
            raise RemoteError(f"{where}: HTTP {exc.status_code}: {message}") from None
        except openai.APIError as exc:  # an error event in a stream
            raise RemoteError(f"{where}: the server reported an error: {exc.message}") from None
        except httpx.TimeoutException:
            raise RemoteError(
                f"{where}: the stream stalled for more than {spec.timeout_s:g} s (timeout_s in models.yaml)"
            ) from None
        except httpx.HTTPError as exc:
            raise RemoteError(
                f"{where}: the stream broke off ({_cause(exc)}; the server stopped or restarted?)"
            ) from None
        except (MalformedResponse, json.JSONDecodeError) as exc:
            raise RemoteError(f"{where}: malformed response: {exc}") from None


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, Mapping) else error
        if message:
            return " ".join(str(message).split())
    if isinstance(body, Mapping) and body.get("detail"):  # FastAPI (llama_cpp.server)
        return " ".join(str(body["detail"]).split())
    return exc.message


def _cause(exc: BaseException) -> str:
    """The innermost cause of a connection failure ('Connection refused'), one line."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.removeprefix("[Errno 111] ")


class StreamedText:
    """A step's tokens from a server's stream (glimp_cli.generation's token source): the probe's token first if
    given, then one piece per chunk; the stop string the server matched is appended to the text it ended."""

    def __init__(self, session: RemoteSession, first_token: ProbeToken | None, *, stops: Sequence[str]) -> None:
        self.session = session
        self._first = first_token
        self._stops = stops
        self._lead = ""  # the probe's token text, which the request continues after
        self._prompt = ""  # what the request continues: prompt + transcript + the probe's token
        self._streamed = ""  # text the stream has sent
        self._chunks: Iterator[Chunk] | None = None
        self._usage: Usage | None = None
        self._probe_token = first_token is not None and not first_token.eos  # counted as the step's first token
        self._finished = False  # the server ended the completion (not glimp, at a stop string or max_tokens)
        self.server_tokens: int | None = None  # the server's count of the step's tokens, where it gave one

    def propose(self, limit: int) -> Proposal:
        session = self.session
        if self._first is not None:
            first, self._first = self._first, None
            if first.eos:
                return Proposal((), eos=True)
            self._lead = first.text
            return Proposal((first.text.encode("utf-8"),))
        if self._chunks is None:
            self._prompt = session._prompt + session._text + self._lead
            self._chunks = session.open_stream(self._prompt, stops=self._stops, max_tokens=limit)
        for chunk in self._chunks:
            self._usage = chunk.usage or self._usage
            if chunk.finish is not None:
                return self._final(chunk)
            if chunk.text:  # not the usage chunk or a keep-alive
                self._streamed += chunk.text
                return Proposal((chunk.text.encode("utf-8"),))
        raise RemoteError(f"model '{session.name}': a stream without a finish (internal error)")

    def _final(self, chunk: Chunk) -> Proposal:
        """The chunk that ends the completion: the usage chunk may follow it (include_usage)."""
        for rest in self._chunks or ():
            self._usage = rest.usage or self._usage
        self._finished = True
        text = chunk.text + (chunk.stop or "")
        if self._usage is not None:
            self.server_tokens = self._usage.completion_tokens + (1 if self._probe_token else 0)
        self.session._count(self._usage, text=self._prompt + self._streamed + text)
        pieces = (text.encode("utf-8"),) if text else ()
        if chunk.finish == "eos":
            return Proposal(pieces, eos=True)
        return Proposal(pieces, last=chunk.finish == "length")

    def settle(self, kept: int, tail: bytes) -> None:
        pass  # the text is the transcript: nothing to re-tokenize

    def commit(self, out: StepOutput) -> None:
        if self._chunks is not None and not self._finished:
            # glimp ended the step (a stop string it found, or max_tokens) and cut the stream: the count is its own
            self.session.counters.decode_calls += 1
        self._close()
        self.session._text += out.text

    def rollback(self) -> None:
        self._close()

    def _close(self) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks is not None:
            chunks.close()


# -- opening and listing -----------------------------------------------------------------------------------------


def make_client(spec: ModelSpec, *, timeout_s: float | None = None, max_retries: int = DEFAULT_MAX_RETRIES):
    """The openai client for a url model: its timeout (no byte for that long fails a request) and retries."""
    key = "none"  # servers started without a key accept any
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env, "")
        if not key:
            raise ConfigError(
                f"model '{spec.name}': api_key_env names {spec.api_key_env}, which is not set in the environment"
            )
    timeout = timeout_s or spec.timeout_s
    return openai.OpenAI(
        base_url=spec.url,
        api_key=key,
        timeout=openai.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout)),
        max_retries=max_retries,
    )


def read_chat_template(spec: ModelSpec) -> str | None:
    if not spec.chat_template:
        return None
    path = Path(spec.chat_template).expanduser()
    path = path if path.is_absolute() else Path(spec.base_dir) / path
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"model '{spec.name}': cannot read its chat_template {path}: {reason}") from None


def open_remote_session(spec: ModelSpec) -> RemoteSession:
    """A session on the model's server, checked to serve the model (GET /v1/models)."""
    template = read_chat_template(spec)
    client = make_client(spec)
    session = RemoteSession(spec, client=client, engine="openai-compatible", n_ctx=spec.n_ctx, template=template)
    with session._failures():
        listing = client.models.list().to_dict()
    served = served_models(listing)
    if spec.model not in served:
        raise RemoteError(
            f"model '{spec.name}': server {spec.url} does not serve '{spec.model}'; it serves: "
            f"{', '.join(served) or 'nothing'} (set 'model' in models.yaml)"
        )
    session.engine = engine_of(listing, spec.model)
    if spec.tempered_logprobs is None:
        session._tempered = session.engine in TEMPERED_LOGPROBS
    session._n_ctx = context_length(listing, spec.model) or spec.n_ctx
    return session


def server_status(spec: ModelSpec) -> dict[str, Any]:
    """For `glimp models`: whether the server answers (short timeout, no retries), the models it serves and its
    engine; a failure is a note, not an error."""
    try:
        client = make_client(spec, timeout_s=MODELS_TIMEOUT_S, max_retries=0)
        listing = client.models.list().to_dict()
    except (openai.OpenAIError, ConfigError, httpx.HTTPError) as exc:
        reason = _cause(exc) if isinstance(exc, openai.APIConnectionError) else " ".join(str(exc).split())
        return {"reachable": False, "served": [], "engine": None, "note": f"unreachable: {reason}"}
    served = served_models(listing)
    note = None if spec.model in served else f"does not serve '{spec.model}'"
    return {"reachable": True, "served": served, "engine": engine_of(listing, spec.model), "note": note}
