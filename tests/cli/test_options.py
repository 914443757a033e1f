"""CLI defaults are the config dataclasses' defaults: every option, every command."""

from __future__ import annotations

import dataclasses

import click
import click.core
import click.testing
import pytest

from benchmarks.cli import benchmarks_group
from circuitray.cli import COMMANDS, cli
from circuitray.cli.models import MODEL_BUILDS
from circuitray.cli.options import ConfigOption, config_option, config_values, field_default
from circuitray.graph.config import AttributionConfig, PruneConfig
from circuitray.jobs.attribution_job import RunConfig
from circuitray.jobs.dispatch import Placement
from circuitray.jobs.intervention_job import InterventionConfig
from circuitray.models.loading import ModelSpec
from circuitray.organism.matrix import MatrixConfig
from circuitray.outputs.aggregate import AggregateConfig
from circuitray.outputs.report import ReportConfig
from circuitray.query.compare import CompareConfig


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        out[f"{prefix}{name}"] = command
        if isinstance(command, click.Group):
            out.update(_commands(command, f"{prefix}{name} "))
    return out


COMMANDS_BY_PATH = _commands(cli)
# The development benchmarks' commands (python -m benchmarks) follow the same rules.
COMMANDS_BY_PATH.update(_commands(benchmarks_group, "benchmarks "))

# The configs each command fills: a plain option named like one of their fields must
# have the field's default (the rule below catches options written by hand).
CONFIGS = {
    "run": (RunConfig, ModelSpec, AttributionConfig, PruneConfig),
    "intervene": (InterventionConfig,),
    "compare": (CompareConfig,),
    "report": (ReportConfig,),
    "model warm": (ModelSpec,),
    "organism matrix": (MatrixConfig,),
    "benchmarks aggregate": (AggregateConfig,),
}


def _expected(option: click.Option, owner, name: str):
    value = field_default(owner, name)
    if option.multiple:
        return tuple(value or ())
    return value


def test_every_command_is_listed_and_loads():
    assert set(COMMANDS) <= set(COMMANDS_BY_PATH)
    assert {"run", "intervene", "query", "sql", "organism matrix", "bench"} <= set(COMMANDS_BY_PATH)


@pytest.mark.parametrize("path", sorted(COMMANDS_BY_PATH))
def test_every_cli_default_equals_its_dataclass_default(path):
    command = COMMANDS_BY_PATH[path]
    for p in command.params:
        if isinstance(p, ConfigOption):
            owner, name = p.source
            if p.required:
                with pytest.raises(KeyError):  # required, because the field has no default
                    field_default(owner, name)
                continue
            assert p.default == _expected(p, owner, name), (path, p.name, owner, name)
            continue
        if not isinstance(p, click.Option):
            continue
        for owner in CONFIGS.get(path, ()):
            fields = {f.name for f in dataclasses.fields(owner)}
            if p.name in fields:
                try:
                    expected = _expected(p, owner, p.name)
                except KeyError:  # a required field (e.g. out): no default to match
                    continue
                default = None if p.default is click.core.UNSET else p.default
                assert default == expected, (path, p.name, owner)


def test_job_commands_take_every_placement_field():
    placement = {f.name for f in dataclasses.fields(Placement)} - {"restart_timeout_s"}
    for path in ("run", "intervene"):
        sources = {
            p.source[1]
            for p in COMMANDS_BY_PATH[path].params
            if isinstance(p, ConfigOption) and p.source[0] is Placement
        }
        assert sources == placement, path


def test_cli_defaults_build_the_default_configs():
    from circuitray.cli.jobs import intervention_config, run_config

    ctx = COMMANDS_BY_PATH["run"].make_context("run", ["prompts.jsonl", "--out", "o"])
    with ctx:
        assert run_config("prompts.jsonl", "o", ctx.params) == RunConfig("prompts.jsonl", "o")
    ctx = COMMANDS_BY_PATH["intervene"].make_context(
        "intervene", ["runs/a", "--out", "iv", "--features", "top:2"]
    )
    with ctx:
        got = intervention_config("runs/a", "iv", ctx.params)
    assert got == InterventionConfig("runs/a", "iv", ["top:2"])


@dataclasses.dataclass
class _Knobs:
    """Test knobs.

    Attributes:
        depth: How deep to go,
            in layers.
        names: Which ones.
    """

    depth: int = 3
    names: tuple[str, ...] | None = None


def test_a_changed_dataclass_default_changes_the_cli(monkeypatch):
    @click.command()
    @config_option(_Knobs, "depth", type=int)
    @config_option(_Knobs, "names", multiple=True)
    def cmd(**kw):
        click.echo(repr(_Knobs(**config_values(_Knobs, kw))))

    (depth, names) = cmd.params
    assert (depth.default, depth.help) == (3, "How deep to go, in layers.")
    assert names.default == ()
    result = click.testing.CliRunner().invoke(cmd, ["--depth", "5"])
    assert result.output.strip() == "_Knobs(depth=5, names=())", result.output
    monkeypatch.setattr(_Knobs.__dataclass_fields__["depth"], "default", 7)

    @click.command()
    @config_option(_Knobs, "depth", type=int)
    def cmd2(depth):
        pass

    assert cmd2.params[0].default == 7


def test_an_option_cannot_repeat_a_default():
    with pytest.raises(TypeError, match="default comes from _Knobs"):
        config_option(_Knobs, "depth", default=4)


def test_help_summaries_match_the_commands():
    lazy = {**COMMANDS, **{f"model {k}": v for k, v in MODEL_BUILDS.items()}}
    for name, (_, summary) in lazy.items():
        first = " ".join((COMMANDS_BY_PATH[name].help or "").split("\n\n")[0].split())
        assert first == summary, name


def test_help_lists_every_command_without_importing_torch():
    import subprocess
    import sys

    code = (
        "import sys\nsys.argv = ['circuitray', '--help']\nfrom circuitray.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'transformers', 'ray') if m in sys.modules])"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout
    for name in COMMANDS:
        assert f"\n  {name} " in p.stdout, name


# The Ray drivers and everything that only reads: torch is for the actors and builds.
TORCH_FREE = [
    "run",
    "intervene",
    "series",
    "trace",
    "pipeline",
    "finetune",
    "features",
    "query",
    "sql",
    "compare",
    "report",
    "export",
    "aggregate",
    "serve",
    "compact",
    "import-graphs",
    "ws2",
    "bench",
    # The model groups and the commands of theirs that load or build no model here.
    "model",
    "model warm",
    "model build-real",
    "organism",
    "organism build",
    "organism matrix",
]


def test_driver_and_reader_commands_import_no_torch():
    """Their modules load without torch (the CLI answers --help in a fraction of a
    second, and a driver process holds no torch), nor do the actors' classes a driver
    wraps with ray.remote: torch, transformers and circuit-tracer are imported in the
    actor, where a model is loaded."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom circuitray.cli import main\n"
        "for name in sys.argv[1:]:\n"
        "    sys.argv = ['circuitray', *name.split(), '--help']\n"
        "    try:\n        main()\n    except SystemExit as e:\n        assert not e.code, name\n"
        # What a driver imports to wrap its actors' classes with ray.remote.
        "from circuitray.jobs.workers import AttributionWorker, InterventionWorker\n"
        "print([m for m in ('torch', 'transformers', 'circuit_tracer') if m in sys.modules])"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, *TORCH_FREE], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout[-2000:]
