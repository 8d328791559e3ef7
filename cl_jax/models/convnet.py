"""The small ConvNet of the SimCLR random-bits colab (SPEC §3)."""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvNet(nn.Module):
  """3× [conv3×3 stride 2 (no bias) → BN → ReLU] with `widths` filters, then Dense → BN → ReLU.

  The output of the final Dense+BN+ReLU (width `hidden_dim`) is the representation h.
  padding 'SAME' (cl_jax default: 28 px → 4×4×64 = 1024 flattened) or 'VALID' (the colab's:
  28 px → 2×2×64 = 256). BatchNorm: flax/PyTorch convention (momentum 0.9, ε 1e-5) by default;
  the colab's Keras BatchNorm is momentum 0.99, ε 1e-3.
  """
  widths: Sequence[int] = (32, 64, 64)
  hidden_dim: int = 128
  padding: str = "SAME"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32

  @property
  def min_image_size(self) -> int:
    return 8 if self.padding == "SAME" else 15  # three stride-2 convolutions

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                epsilon=self.bn_epsilon, dtype=self.dtype)
    for width in self.widths:
      x = nn.relu(norm()(nn.Conv(width, (3, 3), strides=(2, 2), padding=self.padding,
                                 use_bias=False, dtype=self.dtype)(x)))
    self.sow("intermediates", "feature_map", x)  # local features (analysis.local_features)
    x = x.reshape((x.shape[0], -1))
    return nn.relu(norm()(nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype)(x)))
