"""``circuitray features build``: a transcoder set's feature table from top-activating contexts.

The activations are the ones the graphs are made of: the same ReplacementModel and
transcoders (:func:`circuitray.models.loading.load_replacement_model`), through
circuit-tracer's own ``get_activations``:

1. The corpus is a list of texts: for a real pretrained model its transcoders' own
   corpus (real prose and WS2 sentences, :func:`default_corpus`), for the project's
   other models the WS2 constraint prompts completed with their answers plus the
   filler the organism was trained on (:func:`organism_corpus`), for any model the
   lines of a user's text file.
2. Each text is tokenized as attribution tokenizes a prompt (``ensure_tokenized``: a
   BOS first) and run once; the transcoder activations come back as
   ``[layers, positions, features]``. Position 0 (the BOS, which attribution leaves
   out) is skipped.
3. Per (layer, feature): the tokens it is active on (activation > 0), the sum and
   the largest activation, and the ``top_k`` contexts where its largest activation in
   the context is highest (one example per context: the context up to that token, the
   token, its position, the activation), kept by a running top-k merge so memory is
   ``layers x features x top_k`` whatever the corpus size.
4. The label is a heuristic, and says so in ``source``: the tokens the feature fires
   on most often among its top contexts, with their counts, and the tokens its
   decoder writes towards most directly (decoder vector times the unembedding, the
   final norm left out): ``fires on blarf (6/8), zorp (2/8); promotes happy, glad``.
   A feature never active on the corpus gets no label.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from circuitray.errors import CircuitrayError
from circuitray.features.store import (
    FEATURE_SCHEMA,
    features_path,
    features_table_meta,
    read_features,
    write_features,
)
from circuitray.models.loading import ModelSpec, load_replacement_model

logger = logging.getLogger(__name__)

__all__ = [
    "build_features",
    "default_corpus",
    "feature_activations",
    "organism_corpus",
    "read_corpus",
]

LABEL_TOKENS = 3


def organism_corpus(*, n_prompts: int = 400, n_filler: int = 400, seed: int = 0) -> list[str]:
    """WS2 prompts completed with their answers, then filler sentences (module step 1)."""
    from circuitray.finetune.data import completed
    from circuitray.organism.corpus import filler_sentence
    from circuitray.prompts.ws2 import generate_ws2

    rng = random.Random(seed)
    prompts = [completed(r) for r in generate_ws2(n=n_prompts, seed=seed)]
    return prompts + [filler_sentence(rng) for _ in range(n_filler)]


def default_corpus(model: str, *, n_prompts: int, n_filler: int) -> tuple[list[str], str] | None:
    """The contexts a bundled model's table is built from unless a corpus is given, and
    their description: a real pretrained model's (``circuitray model build-real``)
    transcoder corpus, real prose and WS2 sentences, every text; the organism corpus
    (:func:`organism_corpus`) for the project's other models; None for any other."""
    from circuitray.models.registry import bundled_model

    if bundled_model(model) is None:
        return None
    from circuitray.models.builders.real import REAL_MODELS, RealBuildConfig, corpus

    if model in REAL_MODELS:
        train, heldout, info = corpus(RealBuildConfig())
        return train + heldout, f"{model}'s transcoder corpus ({info['source']})"
    texts = organism_corpus(n_prompts=n_prompts, n_filler=n_filler)
    return texts, f"the WS2 organism corpus ({n_prompts} prompts, {n_filler} filler)"


def read_corpus(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, one context each."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CircuitrayError(f"{path}: corpus file not found") from None
    except UnicodeDecodeError as e:
        raise CircuitrayError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except IsADirectoryError:
        raise CircuitrayError(f"{path}: is a directory, expected a text file") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise CircuitrayError(f"{path}: no text in corpus file")
    return lines


def feature_activations(model, text: str) -> tuple[list[int], torch.Tensor]:
    """Token ids (BOS first) and transcoder activations ``[layers, positions,
    features]`` of one text, as attribution computes them."""
    tokens = model.ensure_tokenized(text)
    _, acts = model.get_activations(tokens)
    return tokens.tolist(), acts.float().cpu()


def _label(tokens: list[str], promotes: list[str]) -> str | None:
    if not tokens:
        return None
    counts = Counter(t.strip() or repr(t) for t in tokens)
    top = counts.most_common(LABEL_TOKENS)
    label = "fires on " + ", ".join(f"{tok} ({n}/{len(tokens)})" for tok, n in top)
    if promotes:
        label += "; promotes " + ", ".join(promotes)
    return label


PROMOTE_CHUNK = 1024  # features per decoder @ unembedding product (bounded memory)


def direct_logit_tokens(
    model, layer: int, width: int, *, k: int = 2, unembed: torch.Tensor | None = None
) -> list[list[str]] | None:
    """Per feature of ``layer``: the ``k`` tokens its decoder raises most directly
    (decoder vector @ unembedding ``[d_model, vocab]``, on the model's device,
    :data:`PROMOTE_CHUNK` features at a time, so a 16k x 256k vocabulary product
    never exists whole; a cross-layer decoder summed over the layers it writes to);
    None where the transcoders do not expose their decoders."""
    unembed = model.unembed_proj if unembed is None else unembed
    assert unembed is not None
    top: list[list[int]] = []
    for start in range(0, width, PROMOTE_CHUNK):
        ids = torch.arange(start, min(start + PROMOTE_CHUNK, width))
        try:
            dec = model.transcoders._get_decoder_vectors(layer, ids)
        except (AttributeError, TypeError, IndexError, RuntimeError, NotImplementedError):
            return None
        if dec.dim() == 3:  # cross-layer: [features, output layers, d_model]
            dec = dec.sum(1)
        w = unembed if unembed.shape[0] == dec.shape[1] else unembed.T
        logits = dec.to(w.device, w.dtype) @ w
        top += logits.topk(min(k, logits.shape[1]), dim=1).indices.tolist()
    decode = model.tokenizer.decode
    return [[decode([t]).strip() or repr(decode([t])) for t in row] for row in top]


def build_features(
    *,
    spec: ModelSpec,
    texts: list[str],
    corpus_name: str,
    top_k: int = 8,
    force: bool = False,
) -> tuple[Path, dict]:
    """Build and write the feature table of ``spec``'s transcoders over ``texts``
    (module docstring); returns its path and a summary. A table holding imported
    labels is not replaced unless ``force``: a build would lose them."""
    transcoders = spec.resolved()["transcoders"]
    current = read_features(transcoders)
    if current is not None and not force and features_table_meta(current).get("imports"):
        raise CircuitrayError(
            f"{features_path(transcoders)}: holds imported labels, which a build would "
            "replace; import them again after, and pass --force"
        )
    if not texts:
        raise CircuitrayError("features build: the corpus has no text")
    if top_k < 1:
        raise CircuitrayError(f"--top-k {top_k}: must be at least 1")
    started = time.perf_counter()
    model = load_replacement_model(spec)
    tally = _tally_corpus(model, texts, top_k=top_k)
    source = (
        f"heuristic: the tokens it fires on most among its top {top_k} contexts of "
        f"{corpus_name}, and the tokens its decoder promotes directly (circuitray features "
        "build)"
    )
    rows = _feature_rows(model, texts, tally, source=source)
    table = pa.table(rows, schema=FEATURE_SCHEMA)
    meta = {
        "built_with": "circuitray features build",
        "model": spec.model,
        "corpus": corpus_name,
        "n_contexts": len(texts),
        "n_tokens": tally.n_tokens,
        "top_k": top_k,
    }
    path = write_features(table, transcoders, meta=meta)
    summary = {
        "path": str(path),
        "transcoders": transcoders,
        "features": table.num_rows,
        "labelled": sum(1 for v in rows["label"] if v),
        "corpus": corpus_name,
        "contexts": len(texts),
        "tokens": tally.n_tokens,
        "seconds": round(time.perf_counter() - started, 2),
    }
    logger.info("feature table of %s: %s", transcoders, summary)
    return path, summary


@dataclass(kw_only=True)
class _Tally:
    """Step 3's running statistics per (layer, feature), ``[layers, features]``, and its
    top-k contexts, ``[layers, features, top_k]`` (value -inf and context -1: none yet).

    Attributes:
        n_active: Tokens it is active on.
        sum_act: Its summed activation.
        max_act: Its largest activation.
        top_val: Its largest activation in each top context, highest first.
        top_ctx: Those contexts' indices into the corpus.
        top_pos: The token position of that activation (the BOS counted).
        n_tokens: Tokens seen (BOS left out).
    """

    n_active: torch.Tensor
    sum_act: torch.Tensor
    max_act: torch.Tensor
    top_val: torch.Tensor
    top_ctx: torch.Tensor
    top_pos: torch.Tensor
    n_tokens: int = 0

    @classmethod
    def empty(cls, *, layers: int, width: int, top_k: int) -> _Tally:
        return cls(
            n_active=torch.zeros(layers, width, dtype=torch.int64),
            sum_act=torch.zeros(layers, width, dtype=torch.float64),
            max_act=torch.zeros(layers, width, dtype=torch.float64),
            top_val=torch.full((layers, width, top_k), -torch.inf, dtype=torch.float64),
            top_ctx=torch.full((layers, width, top_k), -1, dtype=torch.int64),
            top_pos=torch.full((layers, width, top_k), -1, dtype=torch.int64),
        )

    def add(self, acts: torch.Tensor, *, context: int) -> None:
        """One context's activations ``[layers, positions, features]`` (BOS left out),
        merged into the running top-k."""
        top_k = self.top_val.shape[-1]
        self.n_tokens += acts.shape[1]
        active = acts > 0
        self.n_active += active.sum(1)
        self.sum_act += torch.where(active, acts, 0).sum(1, dtype=torch.float64)
        best, where = acts.max(1)  # [layers, features]: this context's strongest token
        self.max_act = torch.maximum(self.max_act, best.double())
        cand_val = torch.cat([self.top_val, best.double().unsqueeze(-1)], -1)
        cand_ctx = torch.cat([self.top_ctx, torch.full_like(self.top_ctx[..., :1], context)], -1)
        cand_pos = torch.cat([self.top_pos, (where + 1).unsqueeze(-1)], -1)  # BOS back in
        # Only contexts where the feature fired are examples.
        cand_val[..., -1] = torch.where(best > 0, cand_val[..., -1], -torch.inf)
        # Stable: among equal activations the earlier context stays first.
        order = torch.sort(cand_val, dim=-1, descending=True, stable=True).indices
        self.top_val = cand_val.gather(-1, order[..., :top_k])
        self.top_ctx = cand_ctx.gather(-1, order[..., :top_k])
        self.top_pos = cand_pos.gather(-1, order[..., :top_k])


def _tally_corpus(model, texts: list[str], *, top_k: int) -> _Tally:
    """Steps 2 and 3: every text run once, its activations merged into the tally."""
    tally = None
    with torch.inference_mode():
        for i, text in enumerate(texts):
            _, acts = feature_activations(model, text)
            acts = acts[:, 1:]  # position 0 is the BOS (step 2)
            if acts.shape[1] == 0:
                continue
            if tally is None:
                layers, _, width = acts.shape
                tally = _Tally.empty(layers=layers, width=width, top_k=top_k)
            tally.add(acts, context=i)
    if tally is None or tally.n_tokens == 0:
        raise CircuitrayError("features build: the corpus has no token past the BOS")
    return tally


def _feature_rows(model, texts: list[str], tally: _Tally, *, source: str) -> dict[str, list]:
    """Step 4: FEATURE_SCHEMA's columns, a row per (layer, feature): its statistics, its
    top contexts as examples, and its heuristic label."""
    tokenizer = model.tokenizer
    assert tokenizer is not None, "a ReplacementModel has a tokenizer"
    token_cache: dict[int, list[int]] = {}

    def tokens_of(ctx: int) -> list[int]:
        if ctx not in token_cache:
            token_cache[ctx] = model.ensure_tokenized(texts[ctx]).tolist()
        return token_cache[ctx]

    layers, width = tally.n_active.shape
    n_tokens = tally.n_tokens
    rows: dict[str, list] = {name: [] for name in FEATURE_SCHEMA.names}
    vals, ctxs = tally.top_val.tolist(), tally.top_ctx.tolist()
    poss = tally.top_pos.tolist()
    counts, sums = tally.n_active.tolist(), tally.sum_act.tolist()
    maxes = tally.max_act.tolist()
    unembed = model.unembed_proj  # once, not per layer
    for layer in range(layers):
        promotes = direct_logit_tokens(model, layer, width, unembed=unembed)
        for feature in range(width):
            examples = []
            tops = zip(
                vals[layer][feature], ctxs[layer][feature], poss[layer][feature], strict=True
            )
            for v, c, p in tops:
                if c < 0 or v == -float("inf"):
                    continue
                ids = tokens_of(c)
                examples.append(
                    {
                        "text": tokenizer.decode(ids[1 : p + 1]),
                        "token": tokenizer.decode([ids[p]]),
                        "pos": p,
                        "activation": v,
                    }
                )
            n = counts[layer][feature]
            label = _label([e["token"] for e in examples], promotes[feature] if promotes else [])
            rows["layer"].append(layer)
            rows["feature"].append(feature)
            rows["label"].append(label)
            rows["source"].append(source if label else "heuristic: never active on the corpus")
            rows["n_active"].append(n)
            rows["n_tokens"].append(n_tokens)
            rows["frequency"].append(n / n_tokens)
            rows["mean_activation"].append(sums[layer][feature] / n if n else None)
            rows["max_activation"].append(maxes[layer][feature] if n else None)
            rows["top_examples"].append(examples)
    return rows
