"""``circuitray features build`` and ``circuitray features import``."""

from __future__ import annotations

import click

from circuitray.cli.options import config_option
from circuitray.cli.printing import console, print_result
from circuitray.errors import CircuitrayError
from circuitray.features.labels import import_labels
from circuitray.features.store import features_path
from circuitray.models.loading import ModelSpec


@click.group("features")
def features_group() -> None:
    """Feature labels per transcoder set: build from top activations, or import."""


@features_group.command("build")
@config_option(ModelSpec, "model")
@config_option(ModelSpec, "transcoders")
@config_option(ModelSpec, "transcoder_cache_dir", type=click.Path(file_okay=False))
@click.option(
    "--corpus",
    type=click.Path(dir_okay=False),
    help="A UTF-8 text file, one context per line (default: a real model's transcoder "
    "corpus; for the project's other models, WS2 prompts with their answers plus the "
    "organism's filler).",
)
@click.option(
    "--n-prompts",
    default=400,
    show_default=True,
    type=click.IntRange(min=0),
    help="WS2 prompts of the organism corpus (the project's models; a real model's "
    "default corpus is its transcoders' own).",
)
@click.option(
    "--n-filler",
    default=400,
    show_default=True,
    type=click.IntRange(min=0),
    help="Filler sentences of the organism corpus.",
)
@click.option("--top-k", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--force", is_flag=True, help="Replace a table that holds imported labels.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def build_cmd(
    model, transcoders, transcoder_cache_dir, corpus, n_prompts, n_filler, top_k, force, as_json
):
    """Build the feature table of a transcoder set from its top-activating contexts."""
    from circuitray.features.build import build_features, default_corpus, read_corpus

    spec = ModelSpec(
        model=model, transcoders=transcoders, transcoder_cache_dir=transcoder_cache_dir
    )
    if corpus:
        texts, name = read_corpus(corpus), str(corpus)
    elif found := default_corpus(model, n_prompts=n_prompts, n_filler=n_filler):
        texts, name = found
    else:
        raise CircuitrayError(f"model {model!r}: not a bundled model; give --corpus TEXT_FILE")
    status = console.status("building the feature table") if not as_json else None
    if status:
        status.start()
    try:
        _, summary = build_features(
            spec=spec, texts=texts, corpus_name=name, top_k=top_k, force=force
        )
    finally:
        if status:
            status.stop()
    text = (
        f"{summary['path']}: {summary['features']} features of {summary['transcoders']} "
        f"({summary['labelled']} labelled) over {summary['contexts']} contexts, "
        f"{summary['tokens']} tokens, in {summary['seconds']:.1f}s"
    )
    print_result(summary, text, as_json=as_json)


@features_group.command("import")
@click.argument("file", type=click.Path())
@click.option(
    "--transcoders",
    required=True,
    help="The transcoder reference the labels belong to, as runs record it "
    "(e.g. gemma, circuitray/organism).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_cmd(file, transcoders, as_json) -> None:
    """Import labels (CSV/Parquet/JSONL with layer, feature, label; or Neuronpedia's
    explanation export) into a transcoder set's feature table."""
    features_path(transcoders)  # a bad reference is refused before the file is read
    summary = import_labels(file, transcoders=transcoders)
    text = (
        f"{summary['path']}: {summary['imported']} labels imported "
        f"({summary['replaced']} replaced, {summary['added']} added; "
        f"{summary['features']} features in the table)"
    )
    print_result(summary, text, as_json=as_json)
