"""ResNet v1 (He et al. 2016) with the SimCLR conventions (docs/method.md §3).

BatchNorm momentum 0.9, epsilon 1e-5 (configurable); the last BN of every residual block starts with γ = 0.
Stem `cifar`: conv3×3 stride 1, no max-pool (images ≤ 32 px); stem `imagenet`: conv7×7 stride 2
+ max-pool 3×3 stride 2. The representation h is the global average pool of the last stage.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class BasicBlock(nn.Module):
  filters: int
  strides: int
  norm: type
  conv: type

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = self.conv(self.filters, (1, 1), (self.strides, self.strides))(x)
      x = self.norm()(x)
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  filters: int
  strides: int
  norm: type
  conv: type

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides))(x)
      x = self.norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  block: type
  stem: str = "cifar"  # 'cifar' | 'imagenet'
  width: int = 64
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32

  @property
  def min_image_size(self) -> int:
    return 32 if self.stem == "imagenet" else 8

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    if self.stem == "imagenet":
      x = nn.relu(norm()(conv(self.width, (7, 7), (2, 2))(x)))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    else:
      x = nn.relu(norm()(conv(self.width, (3, 3))(x)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        strides = 2 if stage > 0 and b == 0 else 1
        x = self.block(self.width * 2**stage, strides, norm, conv)(x)
    self.sow("intermediates", "feature_map", x)  # local features (analysis.local_features)
    return jnp.mean(x, axis=(1, 2))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BottleneckBlock)
