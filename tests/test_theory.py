"""The Xue et al. linear-model simulator: closed form vs Monte Carlo, minimisers, GD, claims."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import theory
from configs import theory as theory_config


def small_config(**overrides):
  c = theory_config.get_config()
  c.update(dict(n=32, d=128, num_probe=400, steps=600, record_every=50, num_seeds=1,
                embedding_sizes=(1, 2, 5, 8), diverse_num_easy=(4, 12), joint_a_sub=(2.5,),
                balanced_labels=True, claim2_sizes=(32, 64), claim2_num_seeds=2))
  c.dynamics.update(dict(n=40, d=400, steps=2000, record_every=100, num_seeds=1))
  c.update(overrides)
  return c


def test_training_labels_are_drawn_at_random_so_class_means_carry_the_subclass():
  c = theory_config.get_config()
  assert not c.balanced_labels
  train = theory.sample_examples(c, 100, np.random.default_rng(0), balanced=False)
  cells = [int(np.sum((train.y == y) & (train.s == s))) for y in (-1, 1) for s in (-1, 1)]
  assert sum(cells) == 100 and len(set(cells)) > 1  # not 25 each
  sub_in_means = [abs(train.s[train.y == y].mean()) for y in (-1, 1)]
  assert max(sub_in_means) > 0.05  # E[s | class] ≠ 0 in the sample: A_SCL has a subclass part
  f_a, _ = theory.moment_factors(train, c, "scl", "imperfect")
  assert np.abs(f_a[1]).max() > 0.01  # the e2 (subclass) row of A_SCL's factor
  balanced = theory.sample_examples(c, 100, np.random.default_rng(0), balanced=True)
  f_a, _ = theory.moment_factors(balanced, c, "scl", "imperfect")
  assert np.abs(f_a[1]).max() < 1e-12
  a, sigma = theory.moments(train, c, "scl", "imperfect")  # the dense moments are the products
  np.testing.assert_allclose(a, theory.moment_factors(train, c, "scl", "imperfect")[0] @
                             theory.moment_factors(train, c, "scl", "imperfect")[0].T)


def test_learn_then_unlearn_needs_a_rise_and_a_fall():
  steps = [0, 100, 200, 300, 400]
  verdict = theory.learn_then_unlearn(steps, [0.6, 0.9, 1.0, 0.8, 0.85], 0.1, 0.1)
  assert verdict == {"detected": True, "initial": 0.6, "peak": 1.0, "peak_step": 200,
                     "end": 0.825}  # the mean of the last quarter (2 of 5 points)
  assert not theory.learn_then_unlearn(steps, [0.6, 0.7, 0.8, 0.9, 1.0], 0.1, 0.1)["detected"]
  assert not theory.learn_then_unlearn(steps, [0.9, 0.95, 0.9, 0.6, 0.5], 0.1, 0.1)["detected"]
  assert not theory.learn_then_unlearn(steps, [0.6, 0.65, 0.6, 0.62, 0.6], 0.1, 0.1)["detected"]
  # One dip after the peak is noise, not unlearning: the curve ends high.
  assert not theory.learn_then_unlearn(list(range(8)), [0.6, 1.0, 0.7, 1.0, 1.0, 1.0, 1.0, 1.0],
                                       0.1, 0.1)["detected"]


def test_weight_rises_then_falls_reads_the_subclass_weight_per_seed():
  steps = [0, 100, 200, 300, 400]
  verdict = theory.weight_rises_then_falls(steps, [1e-4, 0.2, 0.4, 0.1, 0.1])
  assert verdict == {"detected": True, "initial": 1e-4, "peak": 0.4, "peak_step": 200,
                     "end": 0.1}
  assert not theory.weight_rises_then_falls(steps, [1e-4, 0.2, 0.4, 0.3, 0.3])["detected"]
  assert not theory.weight_rises_then_falls(steps, [0.3, 0.4, 0.5, 0.1, 0.1])["detected"]


def test_claim_one_learn_then_unlearn_with_random_labels_not_with_balanced_ones():
  """A small instance of the claim-1 regime (n 40, d 400, weak subclass a_s 0.5, p 2): GD on SCL
  with random training labels lifts the subclass probe to ~1 and then unlearns it; with exactly
  balanced labels A_SCL has no subclass part and GD never learns it."""
  c = small_config(balanced_labels=False)
  c.dynamics.update(steps=4000)
  random_labels = theory.scl_dynamics(c, seed=1)["gd"]["learn_then_unlearn"]
  assert random_labels["detected"] and random_labels["peak"] > 0.9, random_labels
  c.balanced_labels = True
  balanced = theory.scl_dynamics(c, seed=1)["gd"]["learn_then_unlearn"]
  assert not balanced["detected"] and balanced["peak"] < random_labels["peak"] - 0.1, balanced


def _instance(loss, augmentation, seed=0):
  c = small_config(d=12, n=8, num_easy=2, noise=0.8)
  rng = np.random.default_rng(seed)
  train = theory.sample_examples(c, c.n, rng, balanced=True)
  a, sigma = theory.moments(train, c, loss, augmentation, beta=0.3)
  w = rng.normal(0.0, 0.3, (3, c.d))
  return c, train, a, sigma, w


def _pairs(c, train, loss, augmentation, key, batch):
  x = jnp.asarray(train.x)
  z_free = x.at[:, jnp.asarray(theory.feature_layout(c)["easy"])].set(0.0)
  return theory.sample_pairs(key, x, jnp.asarray(train.y), z_free, c, loss, augmentation, 0.3,
                             batch)


@pytest.mark.parametrize("loss", theory.LOSSES)
@pytest.mark.parametrize("augmentation", theory.AUGMENTATIONS)
def test_closed_form_loss_equals_monte_carlo_estimate(loss, augmentation):
  c, train, a, sigma, w = _instance(loss, augmentation)
  v, v_pos, u, u2 = _pairs(c, train, loss, augmentation, jax.random.PRNGKey(1), 400_000)
  w_ = jnp.asarray(w)
  positive = -2.0 * jnp.sum((v @ w_.T) * (v_pos @ w_.T), axis=1)
  negative = jnp.sum((u @ w_.T) * (u2 @ w_.T), axis=1) ** 2
  estimate = float(jnp.mean(positive) + jnp.mean(negative))
  stderr = float(jnp.sqrt(jnp.var(positive) / len(v) + jnp.var(negative) / len(v)))
  exact = float(theory.spectral_loss(w_, jnp.asarray(a), jnp.asarray(sigma)))
  assert abs(estimate - exact) < 5 * stderr, (estimate, exact, stderr)
  assert estimate == pytest.approx(float(theory.sampled_spectral_loss(w_, v, v_pos, u, u2)),
                                   rel=1e-4)


@pytest.mark.parametrize("loss,augmentation", [("scl", "imperfect"), ("ucl", "good"),
                                               ("joint", "imperfect")])
def test_closed_form_gradient_equals_autodiff_of_the_sampled_loss(loss, augmentation):
  c, train, a, sigma, w = _instance(loss, augmentation)
  exact = jax.grad(theory.spectral_loss)(jnp.asarray(w), jnp.asarray(a), jnp.asarray(sigma))
  grad = jax.jit(jax.grad(theory.sampled_spectral_loss))
  estimates = [grad(jnp.asarray(w), *_pairs(c, train, loss, augmentation,
                                            jax.random.PRNGKey(k), 200_000)) for k in range(4)]
  estimate = np.mean(np.asarray(estimates), axis=0)
  assert np.linalg.norm(estimate - exact) / np.linalg.norm(exact) < 0.05
  # The closed-form gradient, by hand: ∇L = −4·W·A + 4·W·Σ·Wᵀ·W·Σ.
  by_hand = -4 * w @ a + 4 * w @ sigma @ w.T @ w @ sigma
  np.testing.assert_allclose(exact, by_hand, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("loss", theory.LOSSES)
def test_min_norm_minimizer_is_stationary_and_smaller_than_gd_from_large_inits(loss):
  c = small_config()
  rng = np.random.default_rng(0)
  train = theory.sample_examples(c, c.n, rng, balanced=True)
  a, sigma = theory.moments(train, c, loss, "imperfect", beta=0.5)
  w_star = theory.min_norm_minimizer(a, sigma, c.p)
  a_, s_ = jnp.asarray(a), jnp.asarray(sigma)
  # Stationary (float64, the gradient −4·W·A + 4·W·Σ·Wᵀ·W·Σ relative to its first term).
  g = -4 * w_star @ a + 4 * w_star @ sigma @ w_star.T @ w_star @ sigma
  assert np.linalg.norm(g) < 1e-8 * np.linalg.norm(4 * w_star @ a)
  best = float(theory.spectral_loss(jnp.asarray(w_star), a_, s_))
  m_star = np.linalg.norm(w_star.T @ w_star)
  for seed in range(2):  # GD from a large random init reaches the same loss with a larger norm
    w0 = np.random.default_rng(seed + 1).normal(0.0, 0.3, (c.p, c.d))
    _, ws = theory.gd_trajectory(w0, a, sigma, lr=0.01, steps=8000, record_every=8000)
    end = ws[-1]
    assert float(theory.spectral_loss(jnp.asarray(end), a_, s_)) <= best + 5e-3 * abs(best)
    assert np.linalg.norm(end.T @ end) > m_star * 1.01


def test_gd_from_small_init_converges_to_the_min_norm_scl_minimizer():
  """Rank A_SCL = 2 ≤ p: GD from a small init stays (to init scale) in range Σ and ends at
  M* = Σ⁺AΣ⁺."""
  c = small_config()
  rng = np.random.default_rng(0)
  train = theory.sample_examples(c, c.n, rng, balanced=True)
  a, sigma = theory.moments(train, c, "scl", "imperfect")
  m_star = np.linalg.pinv(sigma) @ a @ np.linalg.pinv(sigma)
  w_star = theory.min_norm_minimizer(a, sigma, c.p)
  np.testing.assert_allclose(w_star.T @ w_star, m_star, atol=1e-6 * np.abs(m_star).max())
  _, ws = theory.gd_trajectory(rng.normal(0, 1e-4, (c.p, c.d)), a, sigma, lr=0.02, steps=3000,
                               record_every=3000)
  m_gd = ws[-1].T @ ws[-1]
  assert np.linalg.norm(m_gd - m_star) / np.linalg.norm(m_star) < 0.02


def saved_n(claims):
  return claims["scl_min_norm_by_n"]["n"]


def test_each_claim_direction_on_a_small_instance(tmp_path):
  c = small_config()
  claims = theory.run(c, tmp_path)
  v = claims["verdicts"]
  assert v["2_min_norm_collapses_other_minimizer_does_not"]
  assert saved_n(claims) == [32, 64] and "2_min_norm_subclass_falls_to_chance_as_n_grows" in v
  assert v["3_ucl_small_embedding_suppresses_class_larger_restores"]
  assert v["4a_good_augmentation_prevents_suppression_at_small_size"]
  assert v["4b_diverse_easy_features_suppress_at_largest_size"]
  assert v["5_joint_keeps_class_and_subclass"] and v["setting_scl_collapses_and_ucl_suppresses"]
  # Claim 1: its own regime, a verdict per seed and their summary.
  dyn = claims["scl_dynamics"]
  assert dyn["settings"]["d"] == 400 and dyn["settings"]["p"] == 2
  assert dyn["class_accuracy"][-1] > 0.95
  for name in ("gd", "sgd"):
    summary = dyn["learn_then_unlearn"][name]
    assert summary["seeds"] == 1 and len(summary["per_seed"]) == 1
    assert summary["fraction"] == float(summary["per_seed"][0]["detected"])
  # Outputs: claims.json with the documented keys, the summary, two PNGs.
  saved = json.loads((tmp_path / "claims.json").read_text())
  assert {"step", "class_accuracy", "subclass_accuracy"} <= set(saved["scl_dynamics"])
  assert {"class_accuracy", "subclass_accuracy"} <= set(saved["scl_min_norm"])
  ucl = saved["ucl_embedding_size"]
  assert ucl["embedding_size"] == [1, 2, 5, 8]
  assert len(ucl["imperfect_augmentation"]) == len(ucl["good_augmentation"]) == 4
  assert set(saved["joint"]) >= {"scl", "ucl", "joint"} and saved["settings"]["p"] == c.p
  assert "HOLDS" in (tmp_path / "summary.txt").read_text()
  for png in ("dynamics.png", "suppression.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_claim_two_subclass_accuracy_falls_to_chance_as_n_grows_with_random_labels():
  """With random labels a finite sample gives the class means a subclass component ∝ 1/√n: the
  min-norm SCL minimiser decodes the subclass above chance at small n, at chance at large n."""
  c = small_config(balanced_labels=False, claim2_sizes=(32, 2048), num_probe=2000)
  runs = [theory.scl_min_norm_by_n(c, seed) for seed in range(3)]
  small_n, large_n = np.mean([r["subclass_accuracy"] for r in runs], axis=0)
  assert small_n > 0.58 and large_n < min(0.56, small_n - 0.05)
  weights = np.mean([r["subclass_weight"] for r in runs], axis=0)
  assert weights[1] < 0.5 * weights[0]


def test_a_diverging_claim_one_run_names_the_learning_rate(tmp_path):
  c = small_config()
  c.dynamics.update(lr=50.0, steps=200)
  with pytest.raises(theory.ConfigError, match=r"dynamics.lr=50.0 is too large .* diverged"):
    theory.scl_dynamics(c, seed=0)


@pytest.mark.parametrize("field,value,message", [
    ("augmentation", "perfect", "augmentation='perfect' is not one of: imperfect, good"),
    ("n", 10, "n=10 must be a multiple of 4 with balanced_labels=True"),
    ("p", 2, "p=2 must be >= 3"),
    ("d", 8, "d=8 is too small"),
    ("beta", 1.5, r"beta=1.5 must be in \[0, 1\]"),
])
def test_bad_config_is_refused_before_running(tmp_path, field, value, message):
  c = small_config(**{field: value})
  with pytest.raises(theory.ConfigError, match=message):
    theory.run(c, tmp_path)
  assert not list(tmp_path.iterdir())
