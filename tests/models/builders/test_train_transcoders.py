"""Per-layer transcoder training: the JumpReLU refit stays sane out of sample."""

from __future__ import annotations

import torch

from circuitray.models.builders.artifacts import TranscoderWeights
from circuitray.models.builders.train_transcoders import (
    TranscoderTrainingConfig,
    _to_jumprelu,
    metrics,
)


def test_a_feature_that_barely_fires_cannot_take_over_the_refit_decoder():
    """Seen in the robustness matrix (ATEN default, 2 threads, seed 1): layer 2's base
    explained variance was -3.1 while the CLT on the same encoders had 0.9995. A feature
    with a handful of tiny activations in the fitting data got a huge decoder row from
    a nearly unregularised least squares, and fired at full size on other text."""
    g = torch.Generator().manual_seed(0)
    d_model, n = 8, 4000
    mix = torch.randn(d_model, d_model, generator=g)
    x = torch.randn(n, d_model, generator=g)
    # Eight features read relu(x_i); a ninth fires only where x_0 > 3.3: on three
    # tokens of the fitting data, and barely (activations 0.005-0.02).
    x[:, 0] = x[:, 0].clamp(max=3.0)
    x[:3, 0] = torch.tensor([3.31, 3.305, 3.32])
    w_enc = torch.cat([torch.eye(d_model), torch.eye(d_model)[:1]])
    b_enc = torch.cat([torch.zeros(d_model), torch.tensor([-3.3])])
    relu = TranscoderWeights(
        W_enc=w_enc,
        b_enc=b_enc,
        W_dec=torch.zeros(d_model + 1, d_model),
        b_dec=torch.zeros(d_model),
    )
    fit = _to_jumprelu(relu, x, x @ mix, quantile=0.2, ridge=TranscoderTrainingConfig().refit_ridge)

    held_out = torch.randn(1000, d_model, generator=g)
    held_out[:100, 0] = 4.5  # other text where that feature fires for real
    m = metrics(fit, held_out, held_out @ mix)
    assert m["explained_variance"] > 0.5, m  # was -7.7 with the old ridge of 1e-3
    assert fit.W_dec[d_model].norm() < 1, fit.W_dec[d_model].norm()  # was 77
