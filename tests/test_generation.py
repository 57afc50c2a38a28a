"""The generation core on a recording token source: stops, the crossing rule, UTF-8 and roll-back
are the same for one token per proposal and for a batch of tokens."""

from __future__ import annotations

import pytest

from glimp_cli.errors import RunError
from glimp_cli.generation import Proposal, generate
from glimp_cli.session import StepOutput
from glimp_cli.stops import StopScan, find_stop

EOS = None


class ListSource:
    """Proposes `batch` tokens at a time from a list of byte pieces (None = end of generation) and
    records what the core kept."""

    def __init__(self, pieces: list[bytes | None], *, batch: int = 1) -> None:
        self.pieces = list(pieces)
        self.batch = batch
        self.kept: list[bytes] = []  # pieces kept as tokens, then text kept from a cut token
        self.tails: list[bytes] = []
        self.proposals: list[int] = []  # limit asked for each proposal
        self.dropped = 0
        self.committed: StepOutput | None = None
        self.rolled_back = False
        self._last: tuple[bytes, ...] = ()

    def propose(self, limit: int) -> Proposal:
        self.proposals.append(limit)
        out = []
        while self.pieces and len(out) < min(limit, self.batch):
            piece = self.pieces.pop(0)
            if piece is EOS:
                self._last = tuple(out)
                return Proposal(self._last, eos=True)
            out.append(piece)
        self._last = tuple(out)
        return Proposal(self._last, eos=not out)  # nothing left: the end of generation

    def settle(self, kept: int, tail: bytes) -> None:
        self.kept += self._last[:kept]
        self.dropped += len(self._last) - kept - (1 if tail else 0)
        if tail:
            self.tails.append(tail)

    def commit(self, out: StepOutput) -> None:
        self.committed = out

    def rollback(self) -> None:
        self.rolled_back = True


def drain(source: ListSource, *, stops=("\n\n",), max_tokens=100) -> tuple[list[str], StepOutput]:
    step = generate(source, stops=stops, max_tokens=max_tokens)
    pieces = []
    while True:
        try:
            pieces.append(next(step))
        except StopIteration as done:
            return pieces, done.value


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_a_token_that_crosses_the_stop_is_cut_and_its_kept_text_handed_back(batch):
    source = ListSource([b"One", b" two", b".\n\nThe", b" rest"], batch=batch)
    pieces, out = drain(source)
    assert out == StepOutput(text="One two.\n\n", tokens=3, finish="stop", stop="\n\n")
    assert "".join(pieces) == out.text
    assert source.kept == [b"One", b" two"] and source.tails == [b".\n\n"]
    assert source.committed == out and not source.rolled_back


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_a_token_that_ends_exactly_at_the_stop_is_kept_and_the_rest_of_a_batch_dropped(batch):
    source = ListSource([b"a", b".\n\n", b"b", b"c"], batch=batch)
    _, out = drain(source)
    assert out == StepOutput(text="a.\n\n", tokens=2, finish="stop", stop="\n\n")
    assert source.kept == [b"a", b".\n\n"] and source.tails == []
    assert source.dropped == {1: 0, 2: 0, 5: 2}[batch]


def test_a_stop_split_over_tokens_is_found_and_never_streamed():
    source = ListSource([b"x", b"\n", b"\n", b"y"], batch=1)
    pieces, out = drain(source)
    assert out.text == "x\n\n" and out.stop == "\n\n" and out.tokens == 3
    # the first "\n" could start the stop: it is held back until the step ends
    assert pieces == ["x", "\n\n"]


def test_the_earliest_of_several_stops_wins():
    source = ListSource([b"so \\boxed{4} </think>"], batch=1)
    _, out = drain(source, stops=("</think>", "\\boxed{"))
    assert out.text == "so \\boxed{" and out.stop == "\\boxed{"


@pytest.mark.parametrize("batch", [1, 4])
def test_eos_ends_the_step_uncounted(batch):
    source = ListSource([b"a", b"b", EOS, b"c"], batch=batch)
    _, out = drain(source)
    assert out == StepOutput(text="ab", tokens=2, finish="eos")


@pytest.mark.parametrize("batch", [1, 2, 10])
def test_max_tokens_caps_the_step_and_each_proposal(batch):
    source = ListSource([b"t"] * 20, batch=batch)
    _, out = drain(source, max_tokens=5)
    assert out == StepOutput(text="ttttt", tokens=5, finish="length")
    assert sum(min(limit, batch) for limit in source.proposals) == 5
    assert source.proposals[0] == 5


def test_utf8_split_across_tokens_is_streamed_whole():
    euro = "€".encode()  # three bytes
    source = ListSource([b"1 ", euro[:1], euro[1:2], euro[2:], b" 2"], batch=1)
    pieces, out = drain(source, stops=())
    assert out == StepOutput(text="1 € 2", tokens=5, finish="eos")
    assert "".join(pieces) == "1 € 2" and all("\ufffd" not in p for p in pieces)


def test_an_abandoned_step_is_rolled_back_and_not_committed():
    source = ListSource([b"a", b"b", b"c", b"d"], batch=1)
    step = generate(source, stops=(), max_tokens=10)
    next(step)
    step.close()  # the consumer stops reading (Ctrl-C in `glimp ask`)
    assert source.rolled_back and source.committed is None


def test_a_source_that_proposes_nothing_is_an_error_not_a_hang():
    class Silent(ListSource):
        def propose(self, limit: int) -> Proposal:
            return Proposal(())

    with pytest.raises(RunError, match="proposed no token"):
        drain(Silent([]))


def test_stop_scan_looks_only_where_a_new_stop_can_start():
    scan = StopScan(["</think>", "\n\n"])
    assert scan.hold == len("</think>") - 1
    assert scan.push(b"abc </thi") is None
    assert scan.safe_end() == len("abc </thi") - 7
    assert scan.push(b"nk> more") == (3, b"</think>")
    assert bytes(scan.body) == b"abc </think>"
    assert find_stop(b"a\n\nb</think>", [b"</think>", b"\n\n"]) == (3, b"\n\n")
    assert find_stop(b"a\n\nb", [b"\n\n"], 2) is None
