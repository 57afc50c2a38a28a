"""Driving one step of a session by hand, as a consumer of generate_step does (shared by the session tests)."""

from __future__ import annotations

from llama_cpp import Llama


def write(session, *, stops=(), max_tokens=30, stop_after=None, pieces=None):
    """One step: its StepOutput; with stop_after, abandon it after that many text pieces, as a consumer that stops
    reading does (Ctrl-C in `glimp ask`), and return None. The text pieces are appended to `pieces` if given."""
    step = session.generate_step(first_token=None, stops=stops, max_tokens=max_tokens)
    pieces = [] if pieces is None else pieces
    start = len(pieces)
    try:
        while stop_after is None or len(pieces) - start < stop_after:
            pieces.append(next(step))
    except StopIteration as done:
        assert done.value.text == "".join(pieces[start:])
        return done.value
    step.close()
    return None


def reference_continuation(session, problem: str, n_tokens: int, *, llm=None) -> tuple[str, list[int]]:
    """llama-cpp-python generating alone (its own loop, greedy) from the same prompt (on `llm` if given: a model
    loaded with the session's own settings)."""
    if llm is None:
        llm = Llama(
            model_path=session._llm.model_path, n_ctx=session.spec.n_ctx, n_threads=2, logits_all=False, verbose=False
        )
    tokens = []
    for token in llm.generate(
        session.prompt_tokens(problem), temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0
    ):
        if llm._model.token_eos() == token or len(tokens) >= n_tokens:
            break
        tokens.append(token)
    text = b"".join(session._piece_bytes(t) for t in tokens).decode("utf-8", errors="replace")
    return text, tokens


def crossing_offset(session, tokens: list[int], delimiter: str) -> int | None:
    """Text offset of the first token that runs past a delimiter (where routing re-tokenizes)."""
    body = b""
    for token in tokens:
        piece = session._piece_bytes(token)
        start = max(0, len(body) - len(delimiter) + 1)
        body += piece
        at = body.find(delimiter.encode(), start)
        if at >= 0 and at + len(delimiter) < len(body):
            return len(body[: at + len(delimiter)].decode("utf-8", errors="replace"))
    return None
