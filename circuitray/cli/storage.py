"""``circuitray compact``: merge a run folder's parts, or set torn ones aside;
``circuitray import-graphs``: graph JSON files into a run folder (storage only, no
torch)."""

from __future__ import annotations

import click

from circuitray.cli.options import config_option
from circuitray.cli.printing import err_console, print_json
from circuitray.ingest.importer import ImportConfig, import_graphs
from circuitray.storage.run_store import InterventionStore, RunStore


@click.command("compact")
@click.argument("run_dir", type=click.Path(file_okay=False))
@config_option(
    RunStore.compact, "rows_per_file", type=click.IntRange(min=1), help="Edge rows per output file."
)
@click.option(
    "--repair",
    is_flag=True,
    help="First move parts with a torn or missing file into RUN_DIR/quarantine/ (a "
    "resumed run recomputes their prompts).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the part counts as JSON.")
def compact_cmd(run_dir: str, rows_per_file: int, repair: bool, as_json: bool) -> None:
    """Merge a run's part files into large files sorted by graph_id (atomic)."""
    store = RunStore(run_dir)
    if not store.exists() and InterventionStore(run_dir).exists():
        store = InterventionStore(run_dir)
    store.read_meta()  # a clear error when RUN_DIR is not a run folder
    quarantined = store.repair() if repair else {}
    for stem, (path, why) in quarantined.items():
        err_console.print(f"quarantined {stem}: {path}: {why}", soft_wrap=True)
    stats = store.compact(rows_per_file=rows_per_file)
    if as_json:
        extra = {"quarantined": sorted(quarantined)} if repair else {}
        print_json({"run_dir": run_dir, **stats, **extra})
        return
    err_console.print(
        f"{run_dir}: {stats['parts_before']} parts -> {stats['parts_after']}", soft_wrap=True
    )


@click.command("import-graphs")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@config_option(ImportConfig, "out", required=True, type=click.Path(file_okay=False))
@config_option(ImportConfig, "max_bytes", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print what was imported as JSON.")
def import_graphs_cmd(sources: tuple[str, ...], out: str, max_bytes: int, as_json: bool) -> None:
    """Import graph JSON files (circuit-tracer's, Neuronpedia's) into the run folder --out.

    SOURCES are files or folders of ``*.json`` files; a file already in the folder
    (the same SHA-256) adds nothing. Every file is checked before anything is
    written: a bad one is named in one line."""
    result = import_graphs(ImportConfig(sources=list(sources), out=out, max_bytes=max_bytes))
    if as_json:
        print_json(
            {
                "run_dir": result.run_dir,
                "total": result.total,
                "imported": result.imported,
                "skipped": result.skipped,
            }
        )
        return
    err_console.print(
        f"{result.run_dir}: {len(result.imported)} graphs imported, "
        f"{len(result.skipped)} already there; {result.total} in all",
        soft_wrap=True,
    )
