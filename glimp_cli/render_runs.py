"""Rich output for `glimp bench` and `glimp calibrate`: progress, summary tables, histograms."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from glimp_cli.drafting import Speculation
from glimp_cli.bench import ERROR, SUMMARY_COLUMNS, BenchProgress, failed_lines, summary_caption, summary_rows
from glimp_cli.entropy import ENTROPY_MODES
from glimp_cli.render import MODEL_STYLES

# -- glimp bench ------------------------------------------------------------------


class BenchDisplay:
    """Progress on stderr: a Rich bar on a terminal, one plain line per result otherwise."""

    def __init__(self, console, *, out: Path) -> None:
        self.console = console
        self.out = out
        self._progress = None
        self._task = None
        self._skipped = 0
        self._seen = False  # any result, run or skipped

    def __enter__(self) -> BenchDisplay:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._report_skipped()
        if exc_type is KeyboardInterrupt and not self._seen:
            self.console.print("interrupted before the first result", markup=False)
        elif exc_type is KeyboardInterrupt:
            self.console.print(
                f"interrupted: finished results stay in {self.out / 'results.jsonl'}, "
                f"their summary in {self.out / 'summary.md'}; "
                "rerun with --resume to continue",
                markup=False,
                soft_wrap=True,
            )

    def notes(self, notes: Iterable[str]) -> None:
        for note in notes:
            self.console.print(f"note: {note}", style="yellow", markup=False, soft_wrap=True)

    def speculation(self, speculation: Speculation) -> None:
        """The large model's draft source and why, when it speculates."""
        if speculation.legend_text is not None:
            self.console.print(
                speculation.legend_text,
                style="dim",
                markup=False,
                soft_wrap=True,
            )

    def __call__(self, progress: BenchProgress) -> None:
        if progress.status == "skipped":
            self._seen = True
            self._skipped += 1
            return
        self._report_skipped()
        if self.console.is_terminal:
            self._bar(progress)
        elif progress.status == "finished":
            self._seen = True
            self._line(progress)

    def _report_skipped(self) -> None:
        if self._skipped:
            self.console.print(
                f"skipped {self._skipped} results already in {self.out / 'results.jsonl'}", markup=False, soft_wrap=True
            )
            self._skipped = 0

    def _bar(self, progress: BenchProgress) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[accuracy]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            # Start at the results already done, so that the ETA counts only problems actually run.
            self._task = self._progress.add_task("", total=progress.total, completed=progress.done, accuracy="")
        self._seen = self._seen or progress.status == "finished"
        accuracy = f"acc {progress.accuracy:.1%} ({progress.correct}/{progress.scored})" if progress.scored else ""
        description = f"{progress.condition.label} problem {progress.position}/{progress.problems}"
        self._progress.update(self._task, completed=progress.done, description=description, accuracy=accuracy)

    def _line(self, progress: BenchProgress) -> None:
        record = progress.record
        if record["finish_reason"] == ERROR:
            verdict = f"failed ({record['error']})"
        else:
            verdict = "correct" if record["correct"] else "wrong"
            verdict += f" (predicted {record['predicted']!r}, gold {record['gold']!r}) {record['latency_s']:.2f} s"
        self.console.print(
            f"[{progress.done}/{progress.total}] {progress.condition.label} "
            f"problem {progress.position}/{progress.problems} "
            f"id={record['id']} {verdict} · acc {progress.accuracy:.1%} ({progress.correct}/{progress.scored})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def print_summary(console, summary: dict[str, Any]) -> None:
    """The summary table, then one line per problem that could not be run."""
    console.print(summary_table(summary))
    for line in failed_lines(summary):
        console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)


def summary_table(summary: dict[str, Any]):
    """The summary as a Rich table that fits 80 columns; finish reasons go in the caption."""
    finish = "; ".join(f"{row[0]}: {row[-1]}" for row in summary_rows(summary))
    table = Table(
        title=f"glimp bench: {Path(summary['data'] or '?').name}",
        caption=Text(f"{summary_caption(summary)}\nfinish: {finish}"),  # names are not markup
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    short = {"accuracy": "acc", "tokens/s": "tok/s"}
    for column in SUMMARY_COLUMNS[:-1]:
        table.add_column(
            short.get(column, column), justify="left" if column == "mode" else "right", no_wrap=column == "mode"
        )
    for row in summary_rows(summary):
        table.add_row(*row[:-1])
    return table


# -- glimp calibrate --------------------------------------------------------------

BAR_WIDTH = 40
BAR_CHARS = {"small": "█", "large": "▓"}  # distinct without colour too


def print_report(console, report: dict[str, Any]) -> None:
    """Histograms, quantiles and thresholds of the probe; the sweep table; the choice."""
    probe = report["probe"]
    failed = (
        f' (and {probe["failed"]} that could not be run, skipped: see "error" in results.jsonl)'
        if probe.get("failed")
        else ""
    )
    console.print(
        f"probe: {probe['steps']} steps from {probe['problems']} problems{failed}, small model {report['small']} · "
        f"initial-token entropy in nats · pair {report['pair']}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for mode in ENTROPY_MODES:
        if probe["modes"][mode]["histogram"]:
            console.print(histogram_view(probe, mode, configured=mode == report["entropy_mode"]))
    if probe["steps"]:
        console.print(quantile_table(report))
    if report["sweep"] is not None:
        console.print(sweep_table(report))
    console.print(choice_line(report), markup=False, highlight=False, soft_wrap=True)


def histogram_view(probe: dict[str, Any], mode: str, *, configured: bool):

    body = probe["modes"][mode]
    at_rate = body["threshold"]
    threshold = at_rate["threshold"] if at_rate else None
    text = Text().append(f"\n{mode} entropy" + (" (the pair's)" if configured else ""), style="bold")
    if at_rate:
        text.append(f" · threshold {threshold:g} for {at_rate['rate']:.0%} of steps on the large model", style="dim")
    tallest = max(row["steps"] for row in body["histogram"])
    marked = threshold is None
    for row in body["histogram"]:
        length = max(1, round(BAR_WIDTH * row["steps"] / tallest)) if row["steps"] else 0
        large = round(length * row["large_steps"] / row["steps"]) if row["steps"] else 0
        text.append(f"\n{row['low']:5.2f}-{row['high']:<5.2f} ")
        text.append(BAR_CHARS["small"] * (length - large), style=MODEL_STYLES["small"])
        text.append(BAR_CHARS["large"] * large, style=MODEL_STYLES["large"])
        text.append(f"{' ' * (BAR_WIDTH - length)} {row['steps']}")
        if not marked and row["low"] <= threshold < row["high"]:
            text.append(
                f"\n{'':11} ┄┄ {threshold:g} nats: small at or below ({BAR_CHARS['small']}), "
                f"large above ({BAR_CHARS['large']})",
                style="dim",
            )
            marked = True
    if not marked:
        text.append(f"\n{'':11} ┄┄ {threshold:g} nats: every step at or below goes to the small model", style="dim")
    return text


def quantile_table(report: dict[str, Any]):
    probe = report["probe"]
    table = Table(
        title="initial-token entropy (nats)",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
        caption_justify="left",
    )
    names = list(next(iter(probe["modes"].values()))["distribution"])
    for column in ("mode", *names, "threshold", "above", "share"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, body in probe["modes"].items():
        at_rate = body["threshold"]
        numbers = [f"{body['distribution'][name]:.2f}" for name in names]
        if at_rate:
            above = f"{at_rate['large_steps']}/{at_rate['steps']}" + ("" if at_rate["exact"] else "*")
            table.add_row(mode, *numbers, f"{at_rate['threshold']:g}", above, f"{at_rate['share']:.1%}")
        else:
            table.add_row(mode, *numbers, "-", "-", "-")
    at_rate = probe["modes"][report["entropy_mode"]]["threshold"]
    if at_rate:
        table.caption = (
            f"threshold: round({at_rate['rate']:g} × {at_rate['steps']}) = {at_rate['target_steps']} "
            "steps strictly above it (halves round up)"
        )
        if not all(body["threshold"]["exact"] for body in probe["modes"].values()):
            table.caption += "; * ties at the boundary: the closest achievable count"
    return table


SWEEP_COLUMNS = ("condition", "rate", "n", "acc", "± se", "mean s", "vs large", "large steps", "probe share", "")


def sweep_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The sweep table as strings: ★ marks the Pareto-optimal rows, ◀ the chosen threshold."""
    rows = []
    for row in report["sweep"]["rows"]:
        rows.append(
            (
                row["label"],
                f"{row['target_rate']:.0%}" if row["target_rate"] is not None else "-",
                str(row["n"]),
                f"{row['accuracy']:.1%}",
                f"{row['accuracy_se']:.1%}",
                f"{row['latency_mean_s']:.2f}" if row["latency_mean_s"] is not None else "-",
                f"{row['latency_vs_large']:.2f}×" if row["latency_vs_large"] is not None else "-",
                f"{row['large_step_share']:.1%}",
                f"{row['probe_share']:.1%}" if row["probe_share"] is not None else "-",
                ("★" if row["pareto"] else "") + (" ◀" if row["chosen"] else ""),
            )
        )
    return rows


def sweep_table(report: dict[str, Any]):
    table = Table(
        title=f"glimp calibrate sweep: {Path(report['data']).name} ({report['entropy_mode']} entropy)",
        caption="rate: the probe share a threshold came from "
        "· ★ Pareto-optimal (nothing both more accurate and faster) "
        f"· ◀ chosen: {report['sweep']['rule']}",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
        caption_justify="left",
    )
    for column in SWEEP_COLUMNS:
        table.add_column(
            column, justify="left" if column in ("condition", "") else "right", no_wrap=column == "condition"
        )
    for row in sweep_rows(report):
        table.add_row(*row)
    return table


def choice_line(report: dict[str, Any]) -> str:
    if report["threshold"] is None:
        line = f"no threshold chosen: {report['sweep']['reason']}"
    elif report["method"] == "probe":
        at_rate = report["probe"]["modes"][report["entropy_mode"]]["threshold"]
        line = (
            f"threshold {report['threshold']:g} nats ({report['entropy_mode']} entropy): {at_rate['large_steps']} of "
            f"{at_rate['steps']} probe steps ({at_rate['share']:.1%}) are above it and would go to the large model "
            f"(target {at_rate['rate']:.0%} = {at_rate['target_steps']} steps"
            + (")" if at_rate["exact"] else "; ties at the boundary make this the closest count)")
        )
    else:
        line = (
            f"threshold {report['threshold']:g} nats ({report['entropy_mode']} entropy): {report['sweep']['rule']}, "
            f"routed large-step share {report['large_share']:.1%}"
        )
    if report["saved"]:
        line += (
            f"\nsaved to {report['saved']}: `glimp ask` and `glimp bench` "
            f"use it for pair {report['pair']} unless --threshold is given"
        )
    return line
