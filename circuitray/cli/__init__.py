"""The ``circuitray`` command: a thin click layer over the Python API.

Every command parses its options into the API's dataclasses and calls one function
(``circuitray.run``, ``circuitray.run_query``...); options that fill a dataclass field
take their default (and help) from it (:mod:`circuitray.cli.options`). Errors a user
can fix (:class:`CircuitrayError`) print one line to stderr and exit 2; no traceback.

One module per command group: ``prompts`` (ws2), ``jobs`` (run, intervene, pipeline,
compact), ``query`` (query, sql, compare), ``outputs`` (report, export, serve),
``models`` (model, organism), ``bench``; ``output`` holds the table and progress
output they share. Command modules import heavy packages inside the command, so
``circuitray query`` never loads torch or Ray.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

import click

from circuitray.cli.output import err_console
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


# Command name -> "module:attribute". A command's module is imported only when that
# command runs (or help lists it), so ``circuitray query`` loads DuckDB, not torch.
COMMANDS = {
    "ws2": "circuitray.cli.prompts:ws2_cmd",
    "run": "circuitray.cli.jobs:run_cmd",
    "intervene": "circuitray.cli.jobs:intervene_cmd",
    "pipeline": "circuitray.cli.jobs:pipeline_group",
    "compact": "circuitray.cli.storage:compact_cmd",
    "query": "circuitray.cli.query:query_cmd",
    "sql": "circuitray.cli.query:sql_cmd",
    "compare": "circuitray.cli.query:compare_cmd",
    "report": "circuitray.cli.outputs:report_cmd",
    "export": "circuitray.cli.outputs:export_cmd",
    "serve": "circuitray.cli.outputs:serve_cmd",
    "bench": "circuitray.cli.bench:bench_group",
    "model": "circuitray.cli.models:model_group",
    "organism": "circuitray.cli.models:organism_group",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (:data:`COMMANDS`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, attr = COMMANDS[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Attribution graphs for many prompts on Ray, stored as Parquet, queried with DuckDB."""
    _setup_logging(verbose)


def main() -> None:
    """Console entry point: one-line errors for user mistakes, exit code 2."""
    try:
        cli.main(standalone_mode=False)
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
