"""Projection head (docs/method.md §3) and the model that ties encoder, head and online probes together."""
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class ProjectionHead(nn.Module):
  """`num_layers` Dense layers: hidden ones Dense(no bias)→BN→ReLU, the last Dense(no bias)→BN
  without centring (SimCLR). batchnorm=False: Dense(bias)→ReLU …, last Dense(bias) (MoCo-v2).
  output_batchnorm=False: hidden layers with BN, the last a plain Dense(bias) (the randbits
  colab). The output size `embed_dim` is the embedding size studied by Xue et al."""
  num_layers: int
  hidden_dim: int
  embed_dim: int
  batchnorm: bool = True
  output_batchnorm: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> jax.Array:
    def layer(x, width, last):
      norm = self.batchnorm and (self.output_batchnorm or not last)
      x = nn.Dense(width, use_bias=not norm, dtype=self.dtype)(x)
      if norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, use_bias=not last, dtype=self.dtype)(x)
      return x if last else nn.relu(x)
    for _ in range(self.num_layers - 1):
      h = layer(h, self.hidden_dim, last=False)
    return layer(h, self.embed_dim, last=True)


class ContrastiveModel(nn.Module):
  """encoder x → h; head h → z; online linear probes on stop_gradient(h), one per label.

  Returns (h, z, {label_name: logits}), all float32: with `dtype` bfloat16 the encoder and head
  compute in bf16 (parameters and BatchNorm statistics stay float32), and h and z are cast back
  so that losses, similarity matrices and probe logits are float32.
  """
  encoder: nn.Module
  head: ProjectionHead
  probe_classes: Mapping[str, int]
  dtype: Any = jnp.float32
  predictor: Optional[ProjectionHead] = None  # BYOL / SimSiam: q(z), called by `predict`

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    h = self.encoder(x.astype(self.dtype), train=train)
    z = self.head(h, train=train)
    if self.predictor is not None and self.is_initializing():
      self.predictor(z, train=train)  # its parameters exist from initialisation on
    z = z.astype(jnp.float32)
    h = h.astype(jnp.float32)
    frozen = jax.lax.stop_gradient(h)
    logits = {name: nn.Dense(n, name=f"probe_{name}")(frozen)
              for name, n in self.probe_classes.items()}
    return h, z, logits

  def predict(self, x: jax.Array, train: bool):
    """(h, z, logits, p): `__call__`'s outputs and the predictor's p = q(z) (float32)."""
    h, z, logits = self(x, train)
    return h, z, logits, self.predictor(z.astype(self.dtype), train=train).astype(jnp.float32)
