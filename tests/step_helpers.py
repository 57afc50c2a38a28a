"""Driving one step of a session by hand, as a consumer of generate_step does (shared by the session tests)."""

from __future__ import annotations


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
