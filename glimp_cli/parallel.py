"""Problems in flight at once: session pairs for the workers, and a bounded thread pool whose results
come back to the calling thread.

A session holds one problem's context, so each problem in flight needs its own pair of sessions.
Sessions of models served elsewhere (`url:` models) are cheap to make; an in-process llama.cpp
session holds a whole model, so a pair with one runs one problem at a time (check_parallel).

Threads suit the work: it waits on the network. The calling thread alone writes results and
reports progress (run_parallel's on_result), so results.jsonl stays one flushed line per result.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

from glimp_cli.config import Bounds, ModelSpec, check_values
from glimp_cli.errors import ConfigError
from glimp_cli.session import Session

DEFAULT_PARALLEL = 1
POLL_S = 0.1  # how often this thread looks up from waiting: a Ctrl-C delivered to a worker thread runs its handler here
PARALLEL_CHECK = Bounds(1)  # problems in flight at once; the one home of the check (the CLI's min= reads it)

Item = TypeVar("Item")
Result = TypeVar("Result")
MakeSessions = Callable[[], "tuple[Session, Session]"]  # a fresh (small, large) pair


class Cancelled(Exception):
    """A problem stopped before its end because the run is being interrupted: it has no result."""


def check_parallel_value(parallel: int) -> int:
    """`parallel`, or a ConfigError naming --parallel when it is out of range."""
    check_values({"parallel": PARALLEL_CHECK}, {"parallel": parallel}, label=lambda _: "--parallel")
    return parallel


def in_process(spec: ModelSpec) -> bool:
    """Whether a model runs inside glimp (a GGUF file through llama.cpp), not on a server (`url:`)."""
    return not spec.remote


def check_parallel(parallel: int, models: Iterable[ModelSpec]) -> None:
    """A ConfigError when more than one problem is to be in flight with an in-process model in the pair."""
    check_parallel_value(parallel)
    local = [spec.name for spec in models if in_process(spec)]
    if parallel > 1 and local:
        raise ConfigError(
            f"--parallel {parallel}: model '{local[0]}' runs in-process (llama.cpp), and in-process models run one "
            "problem at a time: parallel runs need models served with `url:` in models.yaml (vLLM, SGLang, "
            "llama-server), or --parallel 1"
        )


class SessionPairs:
    """Where each problem gets its (small, large) sessions: a free pair, else a new one from `make`.

    A pair is used by one problem at a time and reused after (Session.start resets it), so a run
    makes at most as many pairs as it has problems in flight; none when every result is stored.
    """

    def __init__(self, make: MakeSessions, *, max_pairs: int | None = None) -> None:
        self._make = make
        self.max_pairs = max_pairs  # None: as many as there are problems in flight
        self._free: list[tuple[Session, Session]] = []
        self._made = 0
        self._lock = threading.Lock()

    @classmethod
    def one(cls, small: Session, large: Session) -> SessionPairs:
        """The same two sessions for every problem: one problem at a time."""
        return cls(lambda: (small, large), max_pairs=1)

    @property
    def made(self) -> int:
        return self._made

    @contextmanager
    def pair(self) -> Iterator[tuple[Session, Session]]:
        """A pair of sessions for one problem, given back when it is done (or failed)."""
        with self._lock:
            pair = self._free.pop() if self._free else None
            if pair is None:
                if self.max_pairs is not None and self._made >= self.max_pairs:
                    raise RuntimeError(f"more problems in flight than the {self.max_pairs} session pair(s) given")
                self._made += 1
        if pair is None:
            try:
                pair = self._make()
            except BaseException:
                with self._lock:
                    self._made -= 1
                raise
        try:
            yield pair
        finally:
            with self._lock:
                self._free.append(pair)


def run_parallel(
    items: Iterable[Item],
    work: Callable[[Item, threading.Event], Result],
    *,
    workers: int,
    on_result: Callable[[Item, Result], None],
) -> None:
    """work(item, stop) for each item on `workers` threads, at most `workers` in flight; on_result(item,
    result) in this thread as each finishes (completion order). Items are drawn from `items` only
    when a worker is free, so what it does while drawing (progress) happens in order, in this thread.

    An error in one item stops the drawing; the others in flight finish and are reported, then the first
    error is raised. Ctrl-C (or a KeyboardInterrupt from an item) sets `stop`: `work` should then raise
    Cancelled at its next check; results already finished are reported, then KeyboardInterrupt is raised.
    A second Ctrl-C stops waiting for the items in flight.
    """
    stop = threading.Event()
    source = iter(items)
    in_flight: dict[Future, Item] = {}
    failure: BaseException | None = None
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glimp-worker")
    finished = False
    try:
        with _first_interrupt_sets(stop):

            def fill() -> None:
                while failure is None and not stop.is_set() and len(in_flight) < workers:
                    item = next(source, _END)
                    if item is _END:
                        return
                    in_flight[executor.submit(work, item, stop)] = item

            fill()
            while in_flight:
                wait(in_flight, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in [f for f in in_flight if f.done()]:  # in the order they were started
                    item = in_flight.pop(future)
                    error = future.exception()
                    if error is None:
                        on_result(item, future.result())
                    elif isinstance(error, KeyboardInterrupt):
                        stop.set()
                    elif not isinstance(error, Cancelled) and failure is None:
                        failure = error
                fill()
            if stop.is_set() and failure is None:
                failure = KeyboardInterrupt()
        finished = True
    finally:
        if not finished:  # a second Ctrl-C, or on_result failed: the items in flight stop at their next check
            stop.set()
        executor.shutdown(wait=finished, cancel_futures=True)
    if failure is not None:
        raise failure


_END = object()


@contextmanager
def _first_interrupt_sets(stop: threading.Event) -> Iterator[None]:
    """While in the block, the first Ctrl-C sets `stop` instead of raising; the second raises
    KeyboardInterrupt. Signals reach the main thread only: elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
