"""Contrastive losses as pure functions of arrays (see shared SPEC.md §1).

Every function here works on the GLOBAL batch: under `jax.jit` over a sharded batch the
negatives span all devices without any hand-written collective.

Shapes: z1, z2 are [N, d] projection-head outputs of the two views of the same N examples.
"""
import jax
import jax.numpy as jnp
import optax


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(‖x‖, eps) along `axis`."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def ntxent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
  """NT-Xent (SimCLR, Chen et al. 2020), mean over the 2N anchors.

  Z = normalize([z1; z2]) (2N×d), S = Z Zᵀ / τ with the diagonal masked out. Anchor i's positive
  is its other view pos(i) = i ± N; the other 2N−2 rows are negatives:

      L = (1/2N) Σ_i −log( exp(S_i,pos(i)) / Σ_{k≠i} exp(S_ik) ).

  The official TF SimCLR code sums the two directions, i.e. reports 2× this value. At
  initialisation (random embeddings) L ≈ log(2N−1).

  Args:
    z1, z2: [N, d] embeddings of view 1 and view 2 (row i of both come from example i).
    temperature: τ > 0.
  Returns:
    Scalar loss.
  """
  n = z1.shape[0]
  z = l2_normalize(jnp.concatenate([z1, z2], axis=0))
  logits = (z @ z.T) / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  positives = jnp.concatenate([jnp.arange(n) + n, jnp.arange(n)])
  return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, positives))


# Config name → loss of (z1, z2, batch, key, loss_config). `batch` holds the labels, `key` is the
# step's PRNG key (for losses that draw random projections or prior samples).
CONTRASTIVE_LOSSES = {
    "ntxent": lambda z1, z2, batch, key, cfg: ntxent(z1, z2, cfg.temperature),
}
