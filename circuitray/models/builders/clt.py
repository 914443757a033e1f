"""A cross-layer transcoder (CLT) built on given per-layer encoders.

A CLT feature of layer ``i`` reads layer ``i``'s MLP input, as a per-layer transcoder
feature does, but writes to the MLP outputs of layers ``i..n_layers-1``. Here the
encoders are kept and only the decoders are fitted:

1. Encode each layer's inputs with that layer's encoder (``W_enc``, ``b_enc`` and the
   JumpReLU threshold, or ReLU without one): codes ``f_i`` of shape (n_tokens, d_tc).
2. Concatenate all layers' codes into ``F = [f_0 | ... | f_{L-1}]`` and accumulate, in
   float64 and over chunks of tokens, the Gram matrix ``F^T F``, the column sums of
   ``F`` and, per target layer ``j``, ``F^T y_j`` and the sum of ``y_j``.
3. Centre them, so ``b_dec`` is fitted without a ridge penalty.
4. For each target layer ``j``, ridge-solve the MLP output ``y_j`` on the codes of all
   features of layers ``<= j`` (the leading ``(j + 1) * d_tc`` block of the Gram):
   ``(F_{<=j}^T F_{<=j} + ridge * I) W = F_{<=j}^T y_j`` on centred data, then
   ``b_dec_j = mean(y_j) - mean(F_{<=j}) W``.
5. Split each solution by source layer: rows of layer ``i`` become
   ``W_dec_i[:, j - i]``.

Layer ``j``'s own decoder block alone is the per-layer least-squares fit, so on the
fitting data the CLT explains at least as much variance as a per-layer set with the
same encoders (up to the ridge); one ``(L * d_tc)^2`` solve per layer is the cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from circuitray.models.builders.artifacts import CrossLayerTranscoderWeights, TranscoderWeights

__all__ = ["clt_metrics", "encode_layer", "fit_cross_layer_transcoder", "reconstruct"]


def encode_layer(
    *,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    threshold: torch.Tensor | None,
    x: torch.Tensor,
) -> torch.Tensor:
    """(n, d_tc) codes of (n, d_model) inputs: JumpReLU with ``threshold``, else ReLU."""
    pre = x @ W_enc.T + b_enc
    if threshold is None:
        return torch.relu(pre)
    return torch.where(pre > threshold, pre, torch.zeros_like(pre))


def fit_cross_layer_transcoder(
    inputs: Mapping[int, torch.Tensor],
    outputs: Mapping[int, torch.Tensor],
    encoders: Mapping[int, TranscoderWeights],
    *,
    ridge: float = 1.0,
    chunk_size: int = 4096,
) -> CrossLayerTranscoderWeights:
    """Keep ``encoders``' encoders and fit CLT decoders jointly (see module docstring).

    Args:
        inputs: Per layer, (n_tokens, d_model) MLP inputs
            (:func:`circuitray.models.builders.hooks.record_mlp_io`); layers ``0..L-1``.
        outputs: Per layer, (n_tokens, d_model) MLP outputs for the same tokens.
        encoders: Per layer, the transcoder whose ``W_enc``, ``b_enc`` and
            ``threshold`` the CLT keeps (their decoders are ignored).
        ridge: Added to the diagonal of the centred Gram matrix (a sum over tokens,
            so its weight shrinks as tokens grow): it keeps decoders of rarely firing
            features finite, and with few tokens per code it is what keeps the fit
            from overfitting (see :data:`circuitray.models.builders.tiny.TINY_CLT_RIDGE`).
        chunk_size: Tokens encoded at a time while accumulating the Gram matrix.

    Returns:
        The CLT, in float32.
    """
    n_layers = len(encoders)
    if sorted(encoders) != list(range(n_layers)):
        raise ValueError(f"encoders must cover layers 0..{n_layers - 1}, got {sorted(encoders)}")
    enc = [encoders[i] for i in range(n_layers)]
    has_threshold = {w.threshold is not None for w in enc}
    if len(has_threshold) != 1:
        raise ValueError("encoders mix JumpReLU and ReLU layers")
    stats = _centred(_moments(inputs, outputs, enc, chunk_size=chunk_size))
    w_dec, b_dec = _solve(stats, d_tc=enc[0].W_enc.shape[0], ridge=ridge)
    thresholds = [w.threshold for w in enc]
    return CrossLayerTranscoderWeights(
        W_enc=torch.stack([w.W_enc for w in enc]).float(),
        b_enc=torch.stack([w.b_enc for w in enc]).float(),
        W_dec=[w.float().contiguous() for w in w_dec],
        b_dec=b_dec.float(),
        threshold=None
        if None in thresholds
        else torch.stack([t for t in thresholds if t is not None]).float(),
    )


@dataclass(frozen=True)
class _Moments:
    """Step 2's sufficient statistics of the least-squares problems (float64), and
    after step 3 the same centred (``centred``).

    Attributes:
        gram: (width, width) ``F^T F`` over all layers' codes (width = layers x d_tc).
        code_sum: (width,) column sums of ``F``.
        cross: (n_layers, width, d_model) ``F^T y_j`` per target layer ``j``.
        y_sum: (n_layers, d_model) the sum of each ``y_j``.
        n_tokens: Tokens summed over.
    """

    gram: torch.Tensor
    code_sum: torch.Tensor
    cross: torch.Tensor
    y_sum: torch.Tensor
    n_tokens: int
    centred: bool = False

    @property
    def code_mean(self) -> torch.Tensor:
        return self.code_sum / self.n_tokens

    @property
    def y_mean(self) -> torch.Tensor:
        return self.y_sum / self.n_tokens


def _moments(
    inputs: Mapping[int, torch.Tensor],
    outputs: Mapping[int, torch.Tensor],
    enc: list[TranscoderWeights],
    *,
    chunk_size: int,
) -> _Moments:
    """Steps 1-2: encode ``chunk_size`` tokens at a time and accumulate the moments."""
    n_layers = len(enc)
    d_tc, d_model = enc[0].W_enc.shape
    n_tokens = inputs[0].shape[0]
    width = n_layers * d_tc
    gram = torch.zeros(width, width, dtype=torch.float64)
    code_sum = torch.zeros(width, dtype=torch.float64)
    cross = torch.zeros(n_layers, width, d_model, dtype=torch.float64)
    y_sum = torch.zeros(n_layers, d_model, dtype=torch.float64)
    for start in range(0, n_tokens, chunk_size):
        rows = slice(start, start + chunk_size)
        codes = torch.cat(
            [
                encode_layer(W_enc=w.W_enc, b_enc=w.b_enc, threshold=w.threshold, x=inputs[i][rows])
                for i, w in enumerate(enc)
            ],
            dim=1,
        ).double()
        gram += codes.T @ codes
        code_sum += codes.sum(0)
        for j in range(n_layers):
            y = outputs[j][rows].double()
            cross[j] += codes.T @ y
            y_sum[j] += y.sum(0)
    return _Moments(gram=gram, code_sum=code_sum, cross=cross, y_sum=y_sum, n_tokens=n_tokens)


def _centred(m: _Moments) -> _Moments:
    """Step 3: centre the Gram matrix and the cross terms (their tensors in place)."""
    code_mean, y_mean = m.code_mean, m.y_mean
    gram, cross = m.gram, m.cross
    gram -= m.n_tokens * torch.outer(code_mean, code_mean)
    cross -= m.n_tokens * code_mean[None, :, None] * y_mean[:, None, :]
    return replace(m, gram=gram, cross=cross, centred=True)


def _solve(m: _Moments, *, d_tc: int, ridge: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Steps 4-5: one ridge solve per target layer, split by source layer; (W_dec per
    source layer, b_dec), in float64."""
    assert m.centred
    n_layers, _, d_model = m.cross.shape
    code_mean, y_mean = m.code_mean, m.y_mean
    w_dec = [torch.zeros(d_tc, n_layers - i, d_model, dtype=torch.float64) for i in range(n_layers)]
    b_dec = torch.zeros(n_layers, d_model, dtype=torch.float64)
    for j in range(n_layers):
        k = (j + 1) * d_tc
        lhs = m.gram[:k, :k] + ridge * torch.eye(k, dtype=torch.float64)
        sol = torch.linalg.solve(lhs, m.cross[j, :k])
        b_dec[j] = y_mean[j] - code_mean[:k] @ sol
        for i in range(j + 1):
            w_dec[i][:, j - i] = sol[i * d_tc : (i + 1) * d_tc]
    return w_dec, b_dec


def reconstruct(
    clt: CrossLayerTranscoderWeights, inputs: Mapping[int, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Per layer ``j``, the CLT's (n, d_model) MLP output from the codes of layers <= j."""
    codes = [
        encode_layer(
            W_enc=clt.W_enc[i],
            b_enc=clt.b_enc[i],
            threshold=None if clt.threshold is None else clt.threshold[i],
            x=inputs[i],
        )
        for i in range(clt.n_layers)
    ]
    return {
        j: sum((codes[i] @ clt.W_dec[i][:, j - i] for i in range(j + 1)), clt.b_dec[j])
        for j in range(clt.n_layers)
    }


def clt_metrics(
    clt: CrossLayerTranscoderWeights,
    inputs: Mapping[int, torch.Tensor],
    outputs: Mapping[int, torch.Tensor],
) -> dict[str, dict[str, float]]:
    """Per layer (as a string key): nMSE and explained variance of the CLT's output.

    The keys are those of :func:`circuitray.models.builders.train_transcoders.metrics`; L0,
    its fraction and dead features count the layer's own features (whose encoder is
    the per-layer one), ``l0_writing`` every feature that writes to the layer.
    """
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        recon = reconstruct(clt, inputs)
        l0_writing = 0.0
        for j in range(clt.n_layers):
            y, y_hat = outputs[j], recon[j]
            var = (y - y.mean(0)).pow(2).sum(-1).mean()
            resid = y - y_hat
            f = encode_layer(
                W_enc=clt.W_enc[j],
                b_enc=clt.b_enc[j],
                threshold=None if clt.threshold is None else clt.threshold[j],
                x=inputs[j],
            )
            l0 = float((f > 0).float().sum(-1).mean())
            l0_writing += l0
            out[str(j)] = {
                "nmse": float(resid.pow(2).sum(-1).mean() / var),
                "explained_variance": float(
                    1 - (resid - resid.mean(0)).pow(2).sum(-1).mean() / var
                ),
                "l0": l0,
                "l0_fraction": l0 / clt.W_enc.shape[1],
                "l0_writing": l0_writing,
                "dead_fraction": float(((f > 0).sum(0) == 0).float().mean()),
            }
    return out
