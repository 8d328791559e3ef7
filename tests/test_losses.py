"""Losses against naive references (values and gradients)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import losses
from tests import float_order


def naive_ntxent(z1, z2, temperature):
  """docs/method.md §1.1 written as explicit loops over anchors and candidates."""
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
  float_order.assert_close(g, g_naive)


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


def naive_supcon(z1, z2, labels, temperature, epsilon=0.0):
  """docs/method.md §1.2 (+ the IFM shift of §1.4) with explicit loops over anchors and candidates."""
  z = [v / jnp.linalg.norm(v) for v in list(z1) + list(z2)]
  y = list(labels) + list(labels)
  total, count = 0.0, 0
  for i in range(len(z)):
    def logit(k):
      shift = -epsilon if y[k] == y[i] else epsilon
      return (jnp.dot(z[i], z[k]) + shift) / temperature
    denom = sum(jnp.exp(logit(k)) for k in range(len(z)) if k != i)
    positives = [p for p in range(len(z)) if p != i and y[p] == y[i]]
    total += -sum(jnp.log(jnp.exp(logit(p)) / denom) for p in positives) / len(positives)
    count += 1
  return total / count


def _pair(n, d, seed):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(k1, (n, d)), jax.random.normal(k2, (n, d))


def test_supcon_matches_naive_value_and_gradient():
  z1, z2 = _pair(6, 4, 0)
  labels = jnp.array([0, 1, 0, 2, 1, 0])
  np.testing.assert_allclose(losses.supcon(z1, z2, labels, 0.3),
                             naive_supcon(z1, z2, labels, 0.3), rtol=1e-5)
  g = jax.grad(losses.supcon, argnums=(0, 1))(z1, z2, labels, 0.3)
  g_naive = jax.grad(naive_supcon, argnums=(0, 1))(z1, z2, labels, 0.3)
  float_order.assert_close(g, g_naive)


def test_supcon_with_unique_labels_is_ntxent():
  z1, z2 = _pair(8, 5, 1)
  np.testing.assert_allclose(losses.supcon(z1, z2, jnp.arange(8), 0.2),
                             losses.ntxent(z1, z2, 0.2), rtol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_ifm_matches_explicit_formula(alpha):
  z1, z2 = _pair(5, 4, 2)
  labels = jnp.array([0, 1, 0, 1, 2])
  eps = 0.1
  expected = (naive_supcon(z1, z2, labels, 0.5) +
              alpha * naive_supcon(z1, z2, labels, 0.5, epsilon=eps)) / (1 + alpha)
  np.testing.assert_allclose(
      losses.supcon(z1, z2, labels, 0.5, ifm_epsilon=eps, ifm_alpha=alpha), expected, rtol=1e-5)
  unique = jnp.arange(5)
  expected = (naive_ntxent(z1, z2, 0.5) +
              alpha * naive_supcon(z1, z2, unique, 0.5, epsilon=eps)) / (1 + alpha)
  np.testing.assert_allclose(losses.ntxent(z1, z2, 0.5, ifm_epsilon=eps, ifm_alpha=alpha),
                             expected, rtol=1e-5)
  # The perturbed loss is harder: IFM raises the loss.
  assert losses.ntxent(z1, z2, 0.5, ifm_epsilon=eps) > losses.ntxent(z1, z2, 0.5)


def test_ifm_with_zero_epsilon_is_exactly_the_loss():
  z1, z2 = _pair(6, 3, 3)
  labels = jnp.array([0, 0, 1, 1, 2, 2])
  assert losses.ntxent(z1, z2, 0.2, ifm_epsilon=0.0, ifm_alpha=3.0) == losses.ntxent(z1, z2, 0.2)
  assert (losses.supcon(z1, z2, labels, 0.2, ifm_epsilon=0.0) ==
          losses.supcon(z1, z2, labels, 0.2))


def test_joint_interpolates_and_reduces_to_its_parts():
  z1, z2 = _pair(6, 4, 4)
  labels = jnp.array([0, 1, 0, 1, 0, 1])
  scl, ucl = losses.supcon(z1, z2, labels, 0.2), losses.ntxent(z1, z2, 0.2)
  assert losses.joint(z1, z2, labels, 0.2, beta=1.0) == scl
  assert losses.joint(z1, z2, labels, 0.2, beta=0.0) == ucl
  np.testing.assert_allclose(losses.joint(z1, z2, labels, 0.2, beta=0.25), 0.25 * scl + 0.75 * ucl,
                             rtol=1e-6)


def test_moco_infonce_matches_naive_loop_with_ifm():
  q, k = _pair(4, 3, 5)
  queue = losses.l2_normalize(jax.random.normal(jax.random.PRNGKey(6), (7, 3)))

  def naive(q, eps):
    total = 0.0
    for i in range(4):
      qi, ki = q[i] / jnp.linalg.norm(q[i]), k[i] / jnp.linalg.norm(k[i])
      pos = jnp.exp((qi @ ki - eps) / 0.2)
      neg = sum(jnp.exp((qi @ queue[j] + eps) / 0.2) for j in range(7))
      total += -jnp.log(pos / (pos + neg))
    return total / 4

  np.testing.assert_allclose(losses.moco_infonce(q, k, queue, 0.2), naive(q, 0.0), rtol=1e-5)
  np.testing.assert_allclose(losses.moco_infonce(q, k, queue, 0.2, ifm_epsilon=0.1),
                             (naive(q, 0.0) + naive(q, 0.1)) / 2, rtol=1e-5)
  float_order.assert_close(jax.grad(lambda q: losses.moco_infonce(q, k, queue, 0.2))(q),
                           jax.grad(lambda q: naive(q, 0.0))(q))
  # Keys and queue are constants for the gradient.
  assert np.all(jax.grad(lambda k: losses.moco_infonce(q, k, queue, 0.2))(k) == 0)


def naive_ntxent_cross_view(z1, z2, temperature, eps=0.0):
  """The colab's form: for each view, row i against the other view's N rows, loops only."""
  a = [v / jnp.linalg.norm(v) for v in z1]
  b = [v / jnp.linalg.norm(v) for v in z2]
  n = len(a)

  def direction(x, y):
    total = 0.0
    for i in range(n):
      logit = lambda k: (jnp.dot(x[i], y[k]) + (-eps if k == i else eps)) / temperature
      total += -(logit(i) - jnp.log(sum(jnp.exp(logit(k)) for k in range(n))))
    return total / n
  return 0.5 * (direction(a, b) + direction(b, a))


@pytest.mark.parametrize("n,d,temperature,eps", [(4, 3, 0.5, 0.0), (5, 8, 0.1, 0.1)])
def test_ntxent_cross_view_matches_naive_value_and_gradient(n, d, temperature, eps):
  k1, k2 = jax.random.split(jax.random.PRNGKey(7 * n + d))
  z1, z2 = jax.random.normal(k1, (n, d)), jax.random.normal(k2, (n, d))
  alpha = 1.0
  ours = lambda a, b: losses.ntxent_cross_view(a, b, temperature, ifm_epsilon=eps,
                                               ifm_alpha=alpha)
  naive = lambda a, b: (naive_ntxent_cross_view(a, b, temperature) + alpha *
                        naive_ntxent_cross_view(a, b, temperature, eps)) / (1 + alpha) \
      if eps else naive_ntxent_cross_view(a, b, temperature)
  np.testing.assert_allclose(ours(z1, z2), naive(z1, z2), rtol=1e-5)
  float_order.assert_close(jax.grad(ours, argnums=(0, 1))(z1, z2),
                           jax.grad(naive, argnums=(0, 1))(z1, z2))
