"""Losses against naive references (values and gradients)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import losses


def naive_ntxent(z1, z2, temperature):
  """SPEC §1.1 written as explicit loops over anchors and candidates."""
  z = [v / jnp.linalg.norm(v) for v in list(z1) + list(z2)]
  n2, n = len(z), len(z1)
  total = 0.0
  for i in range(n2):
    pos = i + n if i < n else i - n
    denom = sum(jnp.exp(jnp.dot(z[i], z[k]) / temperature) for k in range(n2) if k != i)
    total += -jnp.log(jnp.exp(jnp.dot(z[i], z[pos]) / temperature) / denom)
  return total / n2


@pytest.mark.parametrize("n,d,temperature", [(4, 3, 0.5), (6, 8, 0.1), (3, 5, 1.0)])
def test_ntxent_matches_naive_value_and_gradient(n, d, temperature):
  k1, k2 = jax.random.split(jax.random.PRNGKey(n * d))
  z1, z2 = jax.random.normal(k1, (n, d)), jax.random.normal(k2, (n, d))
  np.testing.assert_allclose(losses.ntxent(z1, z2, temperature),
                             naive_ntxent(z1, z2, temperature), rtol=1e-5)
  g = jax.grad(losses.ntxent, argnums=(0, 1))(z1, z2, temperature)
  g_naive = jax.grad(naive_ntxent, argnums=(0, 1))(z1, z2, temperature)
  for a, b in zip(g, g_naive):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_ntxent_initial_value_is_log_2n_minus_1():
  # Random high-dimensional embeddings are nearly orthogonal: every logit ≈ 0.
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  n = 16
  z1, z2 = jax.random.normal(k1, (n, 4096)), jax.random.normal(k2, (n, 4096))
  assert abs(float(losses.ntxent(z1, z2, 1.0)) - math.log(2 * n - 1)) < 0.01


def test_ntxent_is_low_for_matching_views_and_scale_invariant():
  z = jax.random.normal(jax.random.PRNGKey(1), (8, 32))
  assert losses.ntxent(z, z, 0.1) < 0.1 * losses.ntxent(z, jnp.roll(z, 1, axis=0), 0.1)
  np.testing.assert_allclose(losses.ntxent(z, 3 * z, 0.2), losses.ntxent(z, z, 0.2), rtol=1e-5)
