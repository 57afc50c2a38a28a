"""Stop strings in a growing text: where the earliest one ends, scanning only where a new one can start."""

from __future__ import annotations

from collections.abc import Sequence


class StopScan:
    """The text of a step, token piece by piece, checked for stop strings as it grows (pure, bytes).

    Only the last `hold` bytes before a new piece can begin a stop string that the piece completes,
    so each push scans the new piece plus that window, not the whole text.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s.encode("utf-8") for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # bytes that might start a stop string
        self.body = bytearray()

    def push(self, piece: bytes) -> tuple[int, bytes] | None:
        """Append a token's text; if a stop string now ends in it: (bytes of the piece before the cut, stop).

        On a stop the body is cut right after the stop string; the piece's bytes past it are dropped.
        """
        before = len(self.body)
        scan_from = max(0, before - self.hold)
        self.body += piece
        found = find_stop(self.body, self.stops, scan_from)
        if found is None:
            return None
        cut, stop = found
        del self.body[cut:]
        return cut - before, stop

    def safe_end(self) -> int:
        """Bytes of the body that no later piece can turn into part of a stop string."""
        return len(self.body) - self.hold


def find_stop(body: bytes | bytearray, stops: Sequence[bytes], scan_from: int = 0) -> tuple[int, bytes] | None:
    """(end offset, stop) of the stop string that starts earliest at or after scan_from."""
    best = None
    for stop in stops:
        at = body.find(stop, scan_from)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, stop)
    return None if best is None else (best[0] + len(best[1]), best[1])
