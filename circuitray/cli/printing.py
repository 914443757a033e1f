"""Output shared by every command: tables (rich, CSV, JSON, Parquet), progress bars,
run summaries, and the --format/--output options."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from circuitray.errors import CircuitrayError
from circuitray.schema import unique_column_names

console = Console()
err_console = Console(stderr=True)


def print_json(record) -> None:
    """A command's ``--json`` output: ``record`` as indented JSON on stdout."""
    click.echo(json.dumps(record, indent=2, default=str))


def print_result(record, text: str, *, as_json: bool) -> None:
    """What a command did: ``record`` as JSON with ``--json``, else the line ``text``."""
    if as_json:
        print_json(record)
    else:
        console.print(text, soft_wrap=True)


def print_table(table: pa.Table, *, fmt: str = "table", output: str | None = None) -> None:
    """Show an Arrow table as a rich table, or write csv / json / parquet: every column
    in order, a repeated name made unique (:func:`unique_column_names`) in every format."""
    table = unique_column_names(table)
    if fmt == "parquet":
        if not output:
            raise CircuitrayError("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, output)
        return
    if fmt == "csv":
        import pyarrow.csv as pacsv

        # CSV has no lists: nested columns (e.g. a path's node ids) become JSON text.
        for i, col in enumerate(table.schema):
            if pa.types.is_nested(col.type):
                text = [None if v is None else json.dumps(v) for v in table[i].to_pylist()]
                table = table.set_column(i, col.name, pa.array(text, pa.string()))

        if output:
            pacsv.write_csv(table, output)
        else:
            sink = pa.BufferOutputStream()
            pacsv.write_csv(table, sink)
            click.echo(sink.getvalue().to_pybytes().decode(), nl=False)
        return
    if fmt == "json":
        text = json.dumps(table.to_pylist(), indent=2, default=str)
        if output:
            Path(output).write_text(text + "\n")
        else:
            click.echo(text)
        return
    rich_table = Table(show_lines=False, show_edge=False)
    for name in table.column_names:
        rich_table.add_column(name, no_wrap=True)
    for row in zip(*(column.to_pylist() for column in table.columns), strict=True):
        rich_table.add_row(*("" if v is None else _fmt(v) for v in row))
    if output:
        with open(output, "w") as f:
            Console(file=f, width=200).print(rich_table)
    else:
        # Statistics tables are wide; never fold numbers into columns of two letters.
        Console(width=max(console.width, 400) if not console.is_terminal else None).print(
            rich_table, crop=False
        )


class RunProgress:
    """A rich progress bar fed by ``run(on_progress=...)``: one bar per run, started
    only once work starts (so errors before it print cleanly), removed at the end."""

    def __init__(self, *, disabled: bool = False, label: str = "attributing"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.label = label
        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            "errors: {task.fields[errors]}",
            TimeRemainingColumn(),
            console=err_console,
            disable=disabled,
            transient=True,
        )
        self.task = None
        self.errors = 0

    shown_errors = 3  # error messages printed per run as they arrive

    def __enter__(self) -> RunProgress:
        return self

    def __call__(self, done: int, total: int, summary: dict | None) -> None:
        if summary is None:  # a run starts: a new bar
            if self.task is None:
                self.progress.start()
            else:
                self.progress.remove_task(self.task)
            self.errors = 0
            self.task = self.progress.add_task(self.label, total=total, completed=done, errors=0)
            return
        if summary.get("status") == "error":
            self.errors += 1
            if self.errors <= self.shown_errors:  # a few, so a failing run says why
                more = " (more are in the graphs table's error column)"
                err_console.print(
                    f"{summary.get('prompt_id')}: error: {summary.get('error')}"
                    + (more if self.errors == self.shown_errors else ""),
                    soft_wrap=True,
                    markup=False,
                    highlight=False,
                )
        assert self.task is not None
        self.progress.update(self.task, completed=done, errors=self.errors)

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()


def print_run_summary(result) -> None:
    """One line per run: counts, time, rate."""
    rate = result.computed / max(result.elapsed_s - result.ray_start_s, 1e-9)
    err_console.print(
        f"{result.run_dir}: {result.ok} ok, {result.errors} errors of {result.total} "
        f"({result.computed} computed, {result.skipped} already done) in "
        f"{result.elapsed_s:.1f}s (Ray start {result.ray_start_s:.1f}s, "
        f"{rate * 60:.0f} graphs/min)",
        soft_wrap=True,
    )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table_output_options(command):
    """--format and --output, for every command that prints a table."""
    command = click.option("--output", type=click.Path(dir_okay=False), default=None)(command)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "csv", "json", "parquet"]),
        default="table",
        show_default=True,
    )(command)


def parse_params(params: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in params:
        if "=" not in p:
            raise CircuitrayError(f"--param {p!r}: expected key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = v
    return out
