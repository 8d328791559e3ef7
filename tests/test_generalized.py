"""Generalized contrastive losses, sliced Wasserstein, priors, representation metrics."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import losses
from tests import float_order


def naive_swd(x, y, projections):
  total = 0.0
  for p in range(projections.shape[1]):
    px = sorted(float(v) for v in np.asarray(x) @ np.asarray(projections[:, p]))
    py = sorted(float(v) for v in np.asarray(y) @ np.asarray(projections[:, p]))
    total += sum((a - b) ** 2 for a, b in zip(px, py)) / len(px)
  return total / projections.shape[1]


def test_swd_matches_naive_per_projection_loop():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x, y = jax.random.normal(k1, (12, 5)), 2 * jax.random.uniform(k2, (12, 5))
  projections = jax.random.normal(k3, (5, 7))
  np.testing.assert_allclose(losses.sliced_wasserstein(x, y, projections),
                             naive_swd(x, y, projections), rtol=1e-5)


def test_swd_in_one_dimension_is_the_exact_w2_squared():
  x = jnp.array([[3.0], [-1.0], [0.5], [2.0]])
  # W2² between empirical measures in 1-D by brute force over all couplings (permutations).
  y = jnp.array([[0.0], [1.0], [-2.0], [4.0]])
  best = min(np.mean((np.asarray(x[:, 0]) - np.asarray(y[list(p), 0])) ** 2)
             for p in itertools.permutations(range(4)))
  np.testing.assert_allclose(losses.sliced_wasserstein(x, y, jnp.ones((1, 1))), best, rtol=1e-6)
  np.testing.assert_allclose(losses.sliced_wasserstein(x, x + 1.5, jnp.ones((1, 1))), 2.25,
                             rtol=1e-6)


def test_swd_of_a_set_with_itself_or_a_permutation_is_zero():
  x = jax.random.normal(jax.random.PRNGKey(1), (10, 4))
  w = losses.random_orthogonal(jax.random.PRNGKey(2), 4)
  assert float(losses.sliced_wasserstein(x, x, w)) == 0.0
  assert float(losses.sliced_wasserstein(x, x[::-1], w)) == 0.0


def test_swd_gradient_matches_naive_and_flows_into_h_only():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
  h, y = jax.random.normal(k1, (8, 3)), jax.random.normal(k2, (8, 3))
  w = losses.random_orthogonal(k3, 3)
  # d/dx of the SWD: 2/(nP) Σ_p (x w_p − matched y w_p) w_p, matched by rank.
  px, py = np.asarray(h @ w), np.asarray(y @ w)
  expected = np.zeros_like(px)
  for p in range(3):
    ox, oy = np.argsort(px[:, p]), np.argsort(py[:, p])
    expected[ox, p] = 2 * (px[ox, p] - py[oy, p]) / (8 * 3)
  float_order.assert_close(jax.grad(losses.sliced_wasserstein)(h, y, w), expected @ np.asarray(w).T)
  grads = jax.grad(losses.prior_matching, argnums=(0, 1, 2))(h, y, w)
  assert np.abs(grads[0]).max() > 1e-3
  assert np.all(grads[1] == 0) and np.all(grads[2] == 0)


def test_random_projections_orthonormal_fresh_per_key_and_reproducible():
  w1 = losses.random_orthogonal(jax.random.PRNGKey(0), 16)
  np.testing.assert_allclose(w1.T @ w1, np.eye(16), atol=1e-5)
  np.testing.assert_array_equal(w1, losses.random_orthogonal(jax.random.PRNGKey(0), 16))
  w2 = losses.random_orthogonal(jax.random.fold_in(jax.random.PRNGKey(0), 1), 16)
  assert np.abs(w1 - w2).max() > 0.1


def test_prior_samples_have_the_right_support_and_moments():
  key = jax.random.PRNGKey(0)
  g = losses.sample_prior(key, "gaussian", (20000, 8))
  assert abs(float(g.mean())) < 0.02 and abs(float(g.std()) - 1) < 0.02
  u = losses.sample_prior(key, "uniform_hypercube", (20000, 8))
  assert float(u.min()) >= -1 and float(u.max()) <= 1
  assert abs(float(u.var()) - 1 / 3) < 0.01  # Var U(−1, 1) = 1/3
  s = losses.sample_prior(key, "uniform_hypersphere", (20000, 8))
  np.testing.assert_allclose(jnp.linalg.norm(s, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(s.mean(0), 0.0, atol=0.02)
  np.testing.assert_allclose(jnp.mean(s**2, axis=0), 1 / 8, atol=0.01)  # E s_j² = 1/d


def naive_generalized(h1, h2, key, lam, temperature, prior, hidden_norm, scale):
  h1, h2 = np.asarray(h1, np.float64), np.asarray(h2, np.float64)
  if hidden_norm:
    h1 = h1 / np.linalg.norm(h1, axis=1, keepdims=True)
    h2 = h2 / np.linalg.norm(h2, axis=1, keepdims=True)
  n, d = h1.shape
  align = sum(((h1[i] - h2[i]) ** 2).sum() / 2 for i in range(n)) / (n * d)
  h = np.concatenate([h1, h2])
  if prior == "logsumexp":
    dist = np.mean([np.log(sum(np.exp(h[i] @ h[k] / temperature) for k in range(2 * n)))
                    for i in range(2 * n)]) - np.log(d)
  else:
    kp, kw = jax.random.split(key)
    y = np.asarray(losses.sample_prior(kp, prior, h.shape), np.float64)
    if hidden_norm:  # the colab normalises the prior samples as well as h
      y = y / np.linalg.norm(y, axis=1, keepdims=True)
    dist = naive_swd(h, y, losses.random_orthogonal(kw, d))
  return scale * (align + lam * dist)


@pytest.mark.parametrize("prior,hidden_norm", [("logsumexp", True), ("gaussian", False),
                                               ("uniform_hypercube", False),
                                               ("uniform_hypersphere", True), ("gaussian", True),
                                               ("uniform_hypercube", True)])
def test_generalized_matches_the_formula(prior, hidden_norm):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(4), 3)
  h1, h2 = jax.random.normal(k1, (6, 4)), jax.random.normal(k2, (6, 4))
  kwargs = dict(lam=0.7, temperature=0.5, prior=prior, hidden_norm=hidden_norm, scale=2.0)
  np.testing.assert_allclose(losses.generalized(h1, h2, k3, **kwargs),
                             naive_generalized(h1, h2, k3, **kwargs), rtol=1e-4)
  grads = jax.grad(losses.generalized, argnums=(0, 1))(h1, h2, k3, **kwargs)
  assert all(np.all(np.isfinite(g)) and np.abs(g).max() > 0 for g in grads)


def test_hidden_norm_normalises_the_prior_samples_so_gaussian_equals_hypersphere():
  """As in the reference colab: under hidden_norm both h and the prior samples are on the sphere;
  'gaussian' then draws exactly the 'uniform_hypersphere' samples (normalised N(0, 1))."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
  h1, h2 = 3.0 * jax.random.normal(k1, (16, 8)), 3.0 * jax.random.normal(k2, (16, 8))
  loss = lambda prior, norm: float(losses.generalized(h1, h2, k3, lam=1.0, temperature=1.0,
                                                      prior=prior, hidden_norm=norm))
  assert loss("gaussian", True) == pytest.approx(loss("uniform_hypersphere", True), rel=1e-6)
  assert loss("gaussian", False) != pytest.approx(loss("gaussian", True), rel=1e-2)


def test_generalized_logsumexp_gradient_matches_naive():
  k1, k2 = jax.random.split(jax.random.PRNGKey(5))
  h1, h2 = jax.random.normal(k1, (4, 3)), jax.random.normal(k2, (4, 3))

  def naive(h1, h2):  # same formula with explicit loops, in jnp for autodiff
    h1 = h1 / jnp.linalg.norm(h1, axis=1, keepdims=True)
    h2 = h2 / jnp.linalg.norm(h2, axis=1, keepdims=True)
    align = sum(jnp.sum((h1[i] - h2[i]) ** 2) / 2 for i in range(4)) / 12
    h = jnp.concatenate([h1, h2])
    dist = sum(jnp.log(sum(jnp.exp(h[i] @ h[k] / 0.5) for k in range(8))) for i in range(8)) / 8
    return align + 0.3 * (dist - jnp.log(3.0))

  ours = lambda a, b: losses.generalized(a, b, jax.random.PRNGKey(0), lam=0.3, temperature=0.5,
                                         prior="logsumexp", hidden_norm=True)
  np.testing.assert_allclose(ours(h1, h2), naive(h1, h2), rtol=1e-5)
  float_order.assert_close(jax.grad(ours, (0, 1))(h1, h2), jax.grad(naive, (0, 1))(h1, h2))


def test_representation_metrics():
  z = jax.random.normal(jax.random.PRNGKey(0), (256, 8))
  assert float(losses.alignment(z, z)) == pytest.approx(0.0, abs=1e-6)
  np.testing.assert_allclose(losses.alignment(z, -z), 4.0, rtol=1e-5)  # ‖ẑ − (−ẑ)‖² = 4
  collapsed = jnp.ones((64, 8)) + 1e-3 * z[:64]
  assert float(losses.uniformity(z)) < float(losses.uniformity(collapsed)) - 1.0
  assert float(losses.uniformity(jnp.ones((5, 3)))) == pytest.approx(0.0, abs=1e-6)
  line = jnp.outer(jnp.arange(50.0), jnp.ones(8))
  assert float(losses.effective_rank(line)) == pytest.approx(1.0, abs=1e-3)
  assert 7.0 < float(losses.effective_rank(jax.random.normal(jax.random.PRNGKey(1), (4000, 8))))


@pytest.mark.parametrize("prior,hidden_norm", [("logsumexp", True), ("gaussian", False),
                                               ("uniform_hypercube", False),
                                               ("uniform_hypersphere", True)])
def test_each_instantiation_trains_end_to_end(prior, hidden_norm, tmp_path):
  from cl_jax import train
  from configs import generalized_losses
  config = generalized_losses.get_config()
  config.loss.prior, config.loss.hidden_norm = prior, hidden_norm
  config.model.update(head_hidden_dim=32, embed_dim=16)
  config.train.update(batch_size=64, num_steps=3, log_every_steps=1)
  config.evals.linear_eval.probe_steps = 10
  result = train.train_and_evaluate(config, str(tmp_path), jax.devices()[:1])
  assert result["step"] == 3 and 0 <= result["linear_eval"]["label"] <= 1
  assert set(result["metrics"]) == {"alignment", "uniformity", "effective_rank", "embedding_std"}
  assert 1.0 <= result["metrics"]["effective_rank"] <= 16.0


def test_generalized_config_errors(tmp_path):
  from cl_jax import train, validate
  from configs import generalized_losses, simclr_randbit
  config = generalized_losses.get_config()
  config.loss.prior = "laplace"
  with pytest.raises(validate.ConfigError, match="loss.prior='laplace' is not one of: logsumexp"):
    train.train_and_evaluate(config, str(tmp_path))
  config = simclr_randbit.get_config()
  config.loss.name = "generalized"
  with pytest.raises(validate.ConfigError, match="needs loss.lam, .*generalized_losses.py"):
    train.train_and_evaluate(config, str(tmp_path))
