"""Comparisons "up to float order": one computation made twice, its float32 operations in another
order (another device count, `vmap` over runs, gloo's all-reduce, another CPU's vector width).

Rounding makes such results differ, by amounts that depend on the machine: an element-by-element
tolerance set where one CPU happened to land failed on another (an AMD EPYC machine: one bias entry
of a vmapped run off by 0.4 % relative, 2e-5 of its update). Every such test here follows three
rules:

1. Compare in norm, against the quantity's own scale — never element by element.
   An entry that is a sum of terms that cancel (a gradient, a bias near zero) keeps few correct
   relative digits in any order, while the vector it belongs to is accurate to a few ε·√n.
2. For trained parameters the scale is what training changed, ‖θ_T − θ_0‖, not ‖θ_T‖ (mostly the
   initialisation, which would hide a wrong update).
3. Each tolerance has a reason: float32 rounds every operation by at most ε = 2⁻²⁴ ≈ 6e-8
   relative, so a sum of n terms reordered moves by at most ≈ n·ε·Σ|x| and typically ε·√n·Σ|x|
   (the standard error analysis of summation). Each constant below sits
   well above the largest difference measured in two numerical environments of the suite (the
   default and XLA_FLAGS=--xla_cpu_max_isa=SSE4_2, which narrows the vector width: docs/design.md
   "Tests") and well below the change a real defect makes.
"""
import jax
import numpy as np

# One forward (and backward) pass computed in another order: losses, gradients, BatchNorm
# statistics, features, against another device count, vmap or a naive reference. Their sums
# run over n ≲ 1e5 terms (a batch × pixels × channels), so even the worst-case bound n·ε·Σ|x|
# stays below 1e-2·Σ|x| and XLA's blocked sums land near ε·√n ≈ 2e-5 of Σ|x|. Measured ≤ 3.9e-6
# in norm (8 devices vs 1, tests/test_parallel.py, under SSE4_2; ≤ 1e-6 everywhere else): 25×
# margin. A 0.1 % change of the temperature (0.2 → 0.2002) moves the loss by 6e-4 and the
# encoder's gradients by ~1e-3 (median leaf) of their norm: 6-10× above.
ONE_PASS = 1e-4

# Parameters after a few SGD steps: ‖θ_a − θ_b‖ / ‖θ_b − θ_0‖ over the whole tree. Float order in a
# ReLU network is not smooth: an activation within rounding of 0 lands on the other side in one
# program and its gradient jumps, so the difference grows in steps. Measured (vmapped group vs
# runs alone, 6 steps): ≤ 2.1e-5 per leaf in the default environment, up to 6.9e-3 per leaf
# (median 3.9e-3) under SSE4_2 — 7× margin on the worst leaf. A run trained with another run's
# temperature differs by 0.65 of its update (median leaf), 13× above.
TRAINED = 5e-2

# Pixels in [0, 1] of views and scenes made on 8 devices vs 1 (elementwise ops, resizes and blurs
# of ≤ ~50 taps): ≤ 50·ε ≈ 3e-6 per pixel at worst; measured ≤ 5.4e-7. One grey level is 1/255.
PIXELS = 1e-5


def norm_difference(actual, desired, scale=None) -> list:
  """Per leaf of the trees: ‖actual − desired‖ / ‖scale‖ (scale defaults to desired)."""
  actual, desired = jax.tree.leaves(jax.device_get(actual)), jax.tree.leaves(
      jax.device_get(desired))
  scale = desired if scale is None else jax.tree.leaves(jax.device_get(scale))
  assert len(actual) == len(desired) == len(scale)
  out = []
  for a, d, s in zip(actual, desired, scale):
    a, d, s = (np.asarray(x, np.float64) for x in (a, d, s))
    assert a.shape == d.shape, (a.shape, d.shape)
    out.append(float(np.linalg.norm(a - d) / max(np.linalg.norm(s), np.finfo(np.float32).tiny)))
  return out


def assert_close(actual, desired, rtol: float = ONE_PASS, *, scale=None, err_msg=""):
  """Every leaf: ‖actual − desired‖ ≤ rtol · ‖scale‖ (the norm of the same leaf of `scale`,
  default `desired`). A leaf whose scale is 0 must be equal."""
  for i, ratio in enumerate(norm_difference(actual, desired, scale)):
    assert ratio <= rtol, (f"leaf {i}: ‖actual − desired‖ / ‖scale‖ = {ratio:.3g} > {rtol:g} "
                           f"{err_msg}")


def assert_trained_close(actual, desired, start, rtol: float = TRAINED, err_msg=""):
  """Trained parameter trees equal up to float order: ‖actual − desired‖ ≤ rtol · ‖desired −
  start‖ over all leaves together (`start`: the parameters both runs started from)."""
  flat = lambda tree: np.concatenate([np.ravel(np.asarray(x, np.float64))
                                      for x in jax.tree.leaves(jax.device_get(tree))])
  a, d, s = flat(actual), flat(desired), flat(start)
  ratio = float(np.linalg.norm(a - d) / np.linalg.norm(d - s))
  assert ratio <= rtol, f"‖actual − desired‖ / ‖update‖ = {ratio:.3g} > {rtol:g} {err_msg}"
