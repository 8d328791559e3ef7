"""The small ConvNet of the SimCLR random-bits colab (SPEC §3)."""
from typing import Sequence

import flax.linen as nn
import jax


class ConvNet(nn.Module):
  """3× [conv3×3 stride 2 (no bias) → BN → ReLU] with `widths` filters, then Dense → BN → ReLU.

  The output of the final Dense+BN+ReLU (width `hidden_dim`) is the representation h.
  """
  widths: Sequence[int] = (32, 64, 64)
  hidden_dim: int = 128
  min_image_size = 8  # three stride-2 convolutions

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    for width in self.widths:
      x = nn.relu(norm()(nn.Conv(width, (3, 3), strides=(2, 2), use_bias=False)(x)))
    self.sow("intermediates", "feature_map", x)  # local features (analysis.local_features)
    x = x.reshape((x.shape[0], -1))
    return nn.relu(norm()(nn.Dense(self.hidden_dim, use_bias=False)(x)))
