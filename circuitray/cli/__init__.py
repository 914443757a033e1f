"""The ``circuitray`` command: a thin click layer over the Python API.

Every command parses its options into the API's dataclasses and calls one function
(``circuitray.run``, ``circuitray.run_query``...); options that fill a dataclass field
take their default (and help) from it (:mod:`circuitray.cli.options`). Errors a user
can fix (:class:`CircuitrayError`) print one line to stderr and exit 2; no traceback.

One module per command group: ``prompts`` (ws2), ``jobs`` (run, intervene, pipeline,
compact, trace), ``query`` (query, sql, compare), ``outputs`` (report, export, serve),
``models`` (model, organism; ``model_builds``: the random-weight builders, loaded
only when one runs), ``features`` (features build, import), ``finetune``
(finetune, series), ``bench``; ``output`` holds the table and progress output they
share. Command modules are imported only when their command runs
(:class:`LazyGroup`), so ``circuitray query`` and ``circuitray --help`` never load
torch or Ray.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

import click

from circuitray.cli.printing import err_console
from circuitray.errors import CircuitrayError


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        warnings.filterwarnings("ignore")
        for noisy in ("ray", "transformers", "nnsight", "circuit_tracer", "attribution"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# Command name -> ("module:attribute", its help's first paragraph). A command's module is
# imported only when that command runs, and ``circuitray --help`` lists these summaries
# without importing any (tests/cli/test_options.py checks they match the commands), so
# ``circuitray query`` loads DuckDB, not torch.
COMMANDS = {
    "ws2": ("circuitray.cli.prompts:ws2_cmd", "Write a deterministic WS2 constraint corpus."),
    "run": (
        "circuitray.cli.jobs:run_cmd",
        "Attribute every prompt of PROMPTS on Ray into the run folder --out (resumable).",
    ),
    "intervene": (
        "circuitray.cli.jobs:intervene_cmd",
        "Apply feature interventions to the prompts of RUN_DIR on Ray (resumable).",
    ),
    "pipeline": (
        "circuitray.cli.jobs:pipeline_group",
        "Pipelines: prompts, runs, queries and comparisons from one YAML file.",
    ),
    "compact": (
        "circuitray.cli.storage:compact_cmd",
        "Merge a run's part files into large files sorted by graph_id (atomic).",
    ),
    "import-graphs": (
        "circuitray.cli.storage:import_graphs_cmd",
        "Import graph JSON files (circuit-tracer's, Neuronpedia's) into the run folder --out.",
    ),
    "query": (
        "circuitray.cli.query:query_cmd",
        "Run the named query NAME (queries/NAME.sql) over one or more RUN_DIRs.",
    ),
    "sql": (
        "circuitray.cli.query:sql_cmd",
        "Read-only SQL over views graphs, nodes, edges, interventions: circuitray sql "
        'RUN_DIR... "SELECT ..."',
    ),
    "compare": (
        "circuitray.cli.query:compare_cmd",
        "BASELINE CANDIDATE: paired differences per --by group; one RUN: differences "
        "between its --by groups. Bootstrap CIs, effect sizes, Holm-adjusted verdicts.",
    ),
    "report": (
        "circuitray.cli.outputs:report_cmd",
        "One self-contained HTML report of RUN_DIRs (two runs: before/after).",
    ),
    "export": (
        "circuitray.cli.outputs:export_cmd",
        "Write a stored graph in circuit-tracer's graph-viewer JSON format.",
    ),
    "serve": (
        "circuitray.cli.outputs:serve_cmd",
        "Serve exported graphs in circuitray's offline viewer on 127.0.0.1.",
    ),
    "aggregate": (
        "circuitray.cli.outputs:aggregate_cmd",
        "Consensus circuits of RUN_DIRs' graphs per --by group: tables and viewer graphs "
        "in --out (then: circuitray serve OUT).",
    ),
    "trace": (
        "circuitray.cli.jobs:trace_cmd",
        "Attribute one PROMPT (a one-row run folder), export it, optionally serve it.",
    ),
    "bench": (
        "circuitray.cli.bench:bench_group",
        "Benchmarks for your machine: GPU graphs/hour, query processes, scale, synthetic runs.",
    ),
    "finetune": (
        "circuitray.cli.finetune:finetune_cmd",
        "Fine-tune --base on constraint sentences, saving log-spaced checkpoints and "
        "finetune.json in --out (then: circuitray series OUT/finetune.json --out SERIES).",
    ),
    "series": (
        "circuitray.cli.finetune:series_cmd",
        "Attribute the same prompts at every checkpoint of MANIFEST (finetune.json): one "
        "run folder per step under --out (resumable); queries see a step column.",
    ),
    "features": (
        "circuitray.cli.features:features_group",
        "Feature labels per transcoder set: build from top activations, or import.",
    ),
    "model": ("circuitray.cli.models:model_group", "Build and inspect models."),
    "organism": (
        "circuitray.cli.models:organism_group",
        "The WS2 model organism: base and tuned tiny Gemma-2 with trained transcoders.",
    ),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use: ``lazy`` maps a
    command's name to ``("module:attribute", its help's first paragraph)``
    (:data:`COMMANDS` for ``circuitray`` itself; a group of its own may pass others)."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = COMMANDS if lazy is None else lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, attr = self.lazy[cmd_name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the lazy commands' summaries: none is imported."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.lazy and name not in self.commands:
                rows.append(
                    (name, click.Command(name, help=self.lazy[name][1]).get_short_help_str(limit))
                )
            else:
                command = self.get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Attribution graphs for many prompts on Ray, stored as Parquet, queried with DuckDB."""
    _setup_logging(verbose)


def main(group: click.Group | None = None) -> None:
    """Console entry point of ``group`` (circuitray's own command by default): one-line
    errors for user mistakes, exit code 2."""
    # Quiet before click resolves the command: resolving imports its module (torch,
    # transformers) ahead of the group callback.
    _setup_logging(verbose="-v" in sys.argv[1:2] or "--verbose" in sys.argv[1:2])
    try:
        (group or cli).main(standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; run the same command again to resume")
        sys.exit(130)
    except CircuitrayError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:  # e.g. --output into a folder that does not exist
        click.echo(f"error: {e.filename or ''}: {e.strerror or e}", err=True)
        sys.exit(2)
    except Exception as e:  # a bug: one line by default, the traceback with -v
        if "-v" in sys.argv[1:2] or "--verbose" in sys.argv[1:2]:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(
            f"error: internal error {type(e).__name__}: {first} "
            "(rerun with circuitray -v ... for the traceback; please report it)",
            err=True,
        )
        sys.exit(1)
