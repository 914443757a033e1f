"""Per-layer transcoders trained on a model's MLP inputs and outputs.

For each layer, independently:

1. Inputs ``x`` are circuit-tracer's ``ln2.hook_normalized`` (normalised MLP input),
   targets ``y`` its ``hook_mlp_out`` (see :mod:`circuitray.models.builders.hooks`).
2. A ReLU transcoder ``f = relu(W_enc x + b_enc)``, ``y_hat = W_dec^T f + b_dec`` is
   trained with Adam on ``||y - y_hat||^2 / Var(y) + l1 * sum_i f_i ||W_dec_i||``
   (the decoder-norm-weighted L1 of the Anthropic and GemmaScope recipes).
3. Then it becomes a JumpReLU: each feature gets the threshold below which its
   activations carry little of its output (``threshold_quantile`` of its non-zero
   activations, capped), the decoder and b_dec are refit by ridge least squares on the
   thresholded codes, which lowers L0 while keeping explained variance.

Weights are saved in circuit-tracer's ``layer_{i}.safetensors`` layout by the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from circuitray.models.builders.artifacts import TranscoderWeights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranscoderTrainingConfig:
    """Hyper-parameters of transcoder training.

    Attributes:
        d_transcoder: Features per layer.
        steps: Adam steps per layer.
        batch_size: Tokens per step.
        lr: Adam learning rate.
        l1: Weight of the decoder-norm-weighted L1 sparsity penalty.
        threshold_quantile: Quantile of a feature's non-zero activations used as its
            JumpReLU threshold.
        refit_ridge: Ridge of the decoder's least-squares refit on the thresholded
            codes. It must be large next to the squared activations of a feature that
            fires on only a handful of tokens, or that feature's decoder row grows by
            orders of magnitude and wrecks other text (seen at 1e-3: one layer's
            held-out explained variance -3.1); next to a common feature's sum of
            squares (hundreds and more) it is negligible.
    """

    d_transcoder: int = 512
    steps: int = 1500
    batch_size: int = 1024
    lr: float = 3e-3
    l1: float = 3e-3
    threshold_quantile: float = 0.2
    refit_ridge: float = 1.0


def encode(w: TranscoderWeights, x: torch.Tensor) -> torch.Tensor:
    pre = x @ w.W_enc.T + w.b_enc
    if w.threshold is None:
        return torch.relu(pre)
    return torch.where(pre > w.threshold, pre, torch.zeros_like(pre))


def decode(w: TranscoderWeights, f: torch.Tensor) -> torch.Tensor:
    return f @ w.W_dec + w.b_dec


def metrics(w: TranscoderWeights, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Normalised MSE, explained variance and L0 of one layer's transcoder."""
    with torch.no_grad():
        f = encode(w, x)
        y_hat = decode(w, f)
        mse = (y - y_hat).pow(2).sum(-1).mean()
        var = (y - y.mean(0)).pow(2).sum(-1).mean()
        resid = y - y_hat
        ev = 1 - (resid - resid.mean(0)).pow(2).sum(-1).mean() / var
        l0 = (f > 0).float().sum(-1).mean()
    return {
        "nmse": float(mse / var),
        "explained_variance": float(ev),
        "l0": float(l0),
        "l0_fraction": float(l0) / w.W_enc.shape[0],
        "dead_fraction": float(((f > 0).sum(0) == 0).float().mean()),
    }


def train_transcoder(
    x: torch.Tensor, y: torch.Tensor, *, config: TranscoderTrainingConfig, seed: int
) -> TranscoderWeights:
    """Train one layer's transcoder on (x, y) token rows (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    n, d_model = x.shape
    d = config.d_transcoder
    var = (y - y.mean(0)).pow(2).sum(-1).mean()
    w_enc = torch.randn(d, d_model, generator=gen) / d_model**0.5
    w_dec = (w_enc.clone() * 0.1).requires_grad_(True)
    w_enc.requires_grad_(True)
    b_enc = torch.zeros(d, requires_grad=True)
    b_dec = y.mean(0).clone().requires_grad_(True)
    params = [w_enc, w_dec, b_enc, b_dec]
    opt = torch.optim.Adam(params, lr=config.lr)
    for step in range(config.steps):
        idx = torch.randint(n, (config.batch_size,), generator=gen)
        xb, yb = x[idx], y[idx]
        f = torch.relu(xb @ w_enc.T + b_enc)
        y_hat = f @ w_dec + b_dec
        recon = (yb - y_hat).pow(2).sum(-1).mean() / var
        sparsity = (f * w_dec.norm(dim=1)).sum(-1).mean()
        # Ramp the penalty in so features find directions before they are pruned.
        l1 = config.l1 * min(1.0, step / (0.3 * config.steps))
        loss = recon + l1 * sparsity
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        relu = TranscoderWeights(
            W_enc=w_enc.detach(), b_enc=b_enc.detach(), W_dec=w_dec.detach(), b_dec=b_dec.detach()
        )
        return _to_jumprelu(
            relu, x, y, quantile=config.threshold_quantile, ridge=config.refit_ridge
        )


def _to_jumprelu(
    w: TranscoderWeights, x: torch.Tensor, y: torch.Tensor, *, quantile: float, ridge: float
) -> TranscoderWeights:
    """Per-feature thresholds at a quantile of non-zero activations, then refit W_dec."""
    pre = x @ w.W_enc.T + w.b_enc
    d = pre.shape[1]
    threshold = torch.zeros(d)
    for i in range(d):
        col = pre[:, i]
        pos = col[col > 0]
        if pos.numel() >= 10:
            threshold[i] = torch.quantile(pos, quantile)
    # JumpReLU needs a strictly positive threshold; dead features never fire.
    threshold = threshold.clamp(min=1e-3)
    jr = TranscoderWeights(
        W_enc=w.W_enc, b_enc=w.b_enc, W_dec=w.W_dec, b_dec=w.b_dec, threshold=threshold
    )
    f = encode(jr, x)
    f1 = torch.cat([f, torch.ones(len(f), 1)], dim=1)
    gram = f1.T @ f1 + ridge * torch.eye(d + 1)
    sol = torch.linalg.solve(gram, f1.T @ y)
    jr.W_dec = sol[:d].contiguous()
    jr.b_dec = sol[d].contiguous()
    return jr
