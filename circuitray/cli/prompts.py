"""``circuitray ws2``: write the WS2 constraint corpus."""

from __future__ import annotations

import click

from circuitray.cli.options import config_option
from circuitray.cli.printing import (
    err_console,
    print_json,
)
from circuitray.errors import CircuitrayError
from circuitray.prompts.files import write_prompts
from circuitray.prompts.ws2 import generate_ws2


@click.command("ws2")
@config_option(generate_ws2, "n", type=click.IntRange(min=1))
@config_option(generate_ws2, "seed", type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".parquet/.jsonl/.csv")
@click.option("--types", default=None, help="Comma-separated constraint types (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print path and counts as JSON.")
def ws2_cmd(n: int, seed: int, out: str, types: str | None, as_json: bool) -> None:
    """Write a deterministic WS2 constraint corpus."""
    try:
        rows = generate_ws2(n=n, seed=seed, types=types.split(",") if types else None)
    except ValueError as e:
        raise CircuitrayError(str(e)) from None
    write_prompts(rows, out)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["constraint_type"]] = counts.get(r["constraint_type"], 0) + 1
    if as_json:
        print_json({"path": out, "prompts": len(rows), "by_type": counts})
    else:
        err_console.print(f"wrote {len(rows)} prompts to {out}: {counts}")
