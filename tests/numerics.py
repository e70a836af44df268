"""Tolerances from the numerics, not from one library version's output."""

from __future__ import annotations

import numpy as np
from torch import nn

# Rounding a correct float32 implementation may add per layer: reordered sums, fused
# multiply-adds and another convolution algorithm each cost a few units in the last place.
ULPS_PER_LAYER = 16


def float_tolerance(model: nn.Module, dtype=np.float32) -> float:
    """The largest probability difference two correct implementations of `model` (PyTorch
    and an export of it, say) may show: ULPS_PER_LAYER units of rounding for every
    convolution and linear layer the input passes (softmax does not amplify a logit error:
    probabilities move by at most half of it). An export that is actually wrong (a missing
    normalization, a layer in train mode, other weights) is off by orders of magnitude more."""
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    return ULPS_PER_LAYER * layers * float(np.finfo(dtype).eps)
