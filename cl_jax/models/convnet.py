"""The small ConvNet of the SimCLR random-bits colab (docs/method.md §3)."""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` for NHWC inputs and HWIO kernels as one matrix product:
  y[n, i, j] = Σ_{dy,dx,c} x_pad[n, s·i + dy, s·j + dx, c] · W[dy, dx, c] — the kh·kw shifted,
  strided views of the padded input concatenated on channels (im2col), times W reshaped to
  [kh·kw·C, F]. Same result and gradients as the convolution (to float rounding). Why: on CPU,
  XLA's native convolution is faster forward but its gradients are slower than these matmuls
  (benchmarks/conv_layers.py; numbers in benchmarks/README.md). Other layouts, dilations and
  groups fall back to lax."""
  if (lhs_dilation not in (None, (1, 1)) or rhs_dilation not in (None, (1, 1))
      or feature_group_count != 1 or lhs.ndim != 4 or tuple(dimension_numbers or ()) != tuple(
          lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")))):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision)
  (kh, kw, c, f), (sh, sw) = rhs.shape, window_strides
  pads = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding) if isinstance(
      padding, str) else padding
  x = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  columns = jnp.concatenate([x[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw]
                             for dy in range(kh) for dx in range(kw)], axis=-1)
  out = jnp.dot(columns.reshape(-1, kh * kw * c), rhs.reshape(kh * kw * c, f),
                precision=precision)
  return out.reshape(lhs.shape[0], ho, wo, f)


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
  # The convolution: `im2col_conv` on CPU (its gradients are faster under XLA:CPU), XLA's
  # native convolution on GPU/TPU (cuDNN / the TPU's convolution units).
  conv_fn: Any = None

  @property
  def min_image_size(self) -> int:
    return 8 if self.padding == "SAME" else 15  # three stride-2 convolutions

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                epsilon=self.bn_epsilon, dtype=self.dtype)
    conv_fn = self.conv_fn or (im2col_conv if jax.default_backend() == "cpu" else None)
    for width in self.widths:
      x = nn.relu(norm()(nn.Conv(width, (3, 3), strides=(2, 2), padding=self.padding,
                                 use_bias=False, dtype=self.dtype,
                                 conv_general_dilated=conv_fn)(x)))
    self.sow("intermediates", "feature_map", x)  # local features (analysis.local_features)
    x = x.reshape((x.shape[0], -1))
    return nn.relu(norm()(nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype)(x)))
