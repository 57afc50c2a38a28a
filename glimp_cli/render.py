"""Rich and JSON-lines output for the event stream (the only place that prints runs)."""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from glimp_cli.drafting import Speculation
from glimp_cli.events import Answer, Delta, Event, ModelTotals, Probe, Step, Summary, event_record

MODEL_STYLES = {"small": "cyan", "large": "magenta"}
BAR_WIDTH = 10


def entropy_bar(entropy: float, threshold: float, *, width: int = BAR_WIDTH) -> str:
    """A bar whose midpoint is the threshold (full at twice the threshold)."""
    scale = max(2.0 * threshold, 1e-9)
    filled = min(width, round(width * entropy / scale))
    return "█" * filled + "░" * (width - filled)


def json_text(value: Any, *, out: TextIO | None = None, indent: int | None = None) -> str:
    """JSON for `out` (default: stdout): non-ASCII text as is on a UTF-8 stream, as \\u escapes on any
    other (an ASCII or Latin-1 terminal), so that scripts always get every character."""
    out = out if out is not None else sys.stdout
    try:
        unicode = codecs.lookup(getattr(out, "encoding", None) or "utf-8").name.startswith("utf")
    except LookupError:
        unicode = False
    return json.dumps(value, indent=indent, ensure_ascii=not unicode)


def write_json_lines(events: Iterable[Event], *, out: TextIO | None = None) -> Summary | None:
    """One JSON object per event (no streaming deltas); returns the Summary."""
    out = out if out is not None else sys.stdout
    summary = None
    for event in events:
        if isinstance(event, Delta):
            continue
        out.write(json_text(event_record(event), out=out) + "\n")
        out.flush()
        if isinstance(event, Summary):
            summary = event
    return summary


class LiveRenderer:
    """Streams steps as they are written, coloured by model, with each probe's entropy."""

    def __init__(self, console: Console, *, small_name: str, large_name: str) -> None:
        self.console = console
        self.names = {"small": small_name, "large": large_name}
        self._at_line_start = True
        self._step_shown = 0

    def legend(self, *, mode: str, threshold: float, entropy_mode: str, speculation: Speculation | None = None) -> None:
        text = Text()
        for role in ("small", "large"):
            text.append("■ ", style=MODEL_STYLES[role]).append(
                f"{role} = {self.names[role]}   ", style=MODEL_STYLES[role]
            )
        text.append(f"mode {mode} · threshold {threshold:g} nats ({entropy_mode} entropy)", style="dim")
        if speculation is not None and speculation.legend_text is not None:
            text.append(f" · {speculation.legend_text}", style="dim")
        self.console.print(text)

    def render(self, events: Iterable[Event]) -> Summary | None:
        summary = None
        for event in events:
            if isinstance(event, Probe):
                self._probe(event)
            elif isinstance(event, Delta):
                self._delta(event)
            elif isinstance(event, Step):
                self._step_end(event)
            elif isinstance(event, Answer):
                self._answer(event)
            elif isinstance(event, Summary):
                summary = event
                self.console.print(summary_table(summary, self.names))
        return summary

    def _header(self, step: int, model: str, probe: Probe | None = None) -> None:
        self._newline()
        style = MODEL_STYLES[model]
        text = Text(f"── step {step} · {model} ", style=f"bold {style}")
        if probe is not None:
            above = probe.entropy > probe.threshold
            text.append(f"H {probe.entropy:5.2f} ", style="bold red" if above else "green")
            text.append(entropy_bar(probe.entropy, probe.threshold), style="red" if above else "green")
            text.append(" ▲ above threshold" if above else " ≤ threshold", style="red" if above else "dim")
        self.console.print(text)
        self._step_shown = step
        self._at_line_start = True

    def _probe(self, probe: Probe) -> None:
        self._header(probe.step, probe.model, probe)

    def _delta(self, delta: Delta) -> None:
        if delta.step == 0:
            return  # the answer is printed whole
        if delta.step != self._step_shown:
            self._header(delta.step, delta.model)
        self.console.print(Text(delta.text, style=MODEL_STYLES[delta.model]), end="")
        self._at_line_start = delta.text.endswith("\n")

    def _step_end(self, step: Step) -> None:
        if step.index != self._step_shown:
            self._header(step.index, step.model)
        self._newline()
        self.console.print(Text(f"   {step.tokens} tokens · {step.seconds:.2f} s · {step.finish}", style="dim"))

    def _answer(self, answer: Answer) -> None:
        self._newline()
        style = MODEL_STYLES[answer.model]
        self.console.print(
            Text("answer", style=f"bold {style}")
            .append(f" ({answer.model}): ", style=style)
            .append(answer.text.strip(), style="bold")
        )

    def _newline(self) -> None:
        if not self._at_line_start:
            self.console.print()
            self._at_line_start = True


def summary_table(summary: Summary, names: dict[str, str]) -> Table:
    table = Table(
        title=f"{len(summary.steps)} steps · finish: {summary.finish_reason} "
        f"· large share {summary.large_step_rate:.0%}"
    )
    drafted = summary.small.drafted_tokens or summary.large.drafted_tokens  # a column only when speculating
    columns = ("model", "steps", "tokens", "prefill tokens", "decode calls") + (("drafts accepted",) if drafted else ())
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for role, totals in (("small", summary.small), ("large", summary.large)):
        cells = [str(totals.steps), str(totals.tokens), str(totals.prefill_tokens), str(totals.decode_calls)]
        if drafted:
            cells.append(acceptance_cell(totals))
        table.add_row(Text(f"{role} ({names[role]})", style=MODEL_STYLES[role]), *cells)
    table.caption = (
        f"wall {summary.latency_s:.2f} s · {summary.tokens_per_s:.1f} tokens/s · answer by {summary.answer_model}"
    )
    return table


def acceptance_cell(totals: ModelTotals) -> str:
    """Accepted of drafted tokens and the rate, e.g. '38/51 (75%)'; '-' when nothing was drafted."""
    if totals.acceptance_rate is None:
        return "-"
    return f"{totals.accepted_tokens}/{totals.drafted_tokens} ({totals.acceptance_rate:.0%})"
