"""The simplicity-bias theory of Xue, Joshi, Gan, Chen & Mirzasoleiman (ICML 2023) as a simulator.

  python -m cl_jax.theory --config=configs/theory.py --workdir=runs/theory [--config.x=v ...]

writes claims.json, summary.txt and PNGs testing the paper's five claims on a linear model.

Model (docs/method.md §4; choices where the paper is silent are marked [choice]).
  Data, x ∈ R^d:  x = a_c·y·e1 + a_s·s·e2 + Σ_j a_e·z_j·e_{2+j} + ξ
    y ∈ {±1} class, s ∈ {±1} subclass, z_j ∈ {±1} k class-irrelevant "easy" features (easy = high
    variance a_e² > a_c²), ξ ~ N(0, σ²/(d−2−k)) on the remaining d−2−k coordinates (‖ξ‖ ≈ σ).
    The n training examples draw y, s and z at random, as the paper's data model does, so each
    class's mean carries a finite-sample subclass component (`balanced_labels=True` instead
    cycles (y, s) through the four combinations exactly, which removes it); test samples are
    drawn at random.
  Views (augmentations) of an example: the same y, s and ξ; "imperfect" augmentation keeps the
    example's z in both views, "good" augmentation redraws z independently per view.
  Encoder f(x) = W x, W ∈ R^{p×d} (p = embedding size), small random initialisation.
  Spectral contrastive loss (HaoChen et al. 2021), over positive pairs (v, v⁺) and independent
    views u, u′:   L(W) = −2·E[f(v)ᵀf(v⁺)] + E[(f(u)ᵀf(u′))²].
    UCL: v, v⁺ are two views of one training example. SCL: two views of two training examples of
    the same class (the partner drawn uniformly from the class, itself included). Joint:
    β·L_SCL + (1−β)·L_UCL.

Closed form (the expectation over the sampling of pairs from the n training examples). With
M = WᵀW, the second moment of a view Σ = E[v vᵀ] and the positive-pair moment A = E[v v⁺ᵀ]:
    L(W) = −2·tr(W A Wᵀ) + ‖W Σ Wᵀ‖_F²  =  −2·tr(M A) + tr(M Σ M Σ),
since E[(uᵀMu′)²] = E[uᵀ M u′u′ᵀ M u] = tr(M Σ M Σ) for independent u, u′. Here
    Σ   = (1/n)·Σ_i x̄_i x̄_iᵀ + C,   x̄_i = E[view of x_i],  C = a_e²·I_easy for good augmentation
    A_UCL = (1/n)·Σ_i x̄_i x̄_iᵀ,  A_SCL = Σ_c π_c μ_c μ_cᵀ (μ_c = mean of x̄_i over class c),
    A_joint = β·A_SCL + (1−β)·A_UCL.
L is quadratic in M (convex: tr(MΣMΣ) = ‖Σ^½MΣ^½‖²). With N = Σ^½MΣ^½ and B = Σ^+½ A Σ^+½:
    L = ‖N − B‖_F² − ‖B‖_F²,
so the minimisers with rank(M) ≤ p are M = Σ^+½ N_p Σ^+½ + (terms that vanish on range Σ), N_p a
best rank-p approximation of B (its top-p eigenpairs, Eckart–Young). The MINIMUM-NORM minimiser
drops the terms outside range Σ: M* = Σ^+½ N_p Σ^+½ (= Σ⁺AΣ⁺ when rank B ≤ p). [choice] When the
p-th eigenvalue of B is tied (e.g. UCL with imperfect augmentation, where A = Σ and B is a
projection), the tied directions with the largest Σ-variance are taken: they give the smallest
‖M‖ (‖M‖_F² = Σ 1/λ² over the chosen Σ-eigendirections when A = Σ).
Other minimisers of the same training loss add directions v ⟂ range Σ (v ⟂ every training view):
the loss on the training set is unchanged, but f(x_test) changes — that is how a minimiser can
represent the subclass on test data while the minimum-norm one does not.

Training: full-batch GD on the closed form (= the expected training loss) and minibatch SGD on
sampled pairs (jit + lax.scan), W recorded every `record_every` steps. GD uses factors of the
moments, A = F_A F_Aᵀ and Σ = F_Σ F_Σᵀ (F of width ≤ n + k), so a step costs O(p·d·n), not O(p·d²).

Claim 1 runs in its own regime (`config.dynamics`, overriding the other fields): per seed, the
subclass probe "learns then unlearns" when it rises at least `rise` above its value at the
initialisation and then ends (the mean of the curve's last quarter) at least `fall` below its
peak; reported is the fraction of seeds
where it does, for GD and for SGD, and the median step of the peak.
Measurement: logistic-regression probes (class y, subclass s) fitted on the representations of
fresh samples and tested on other fresh samples; ‖W e1‖, ‖W e2‖ and the root-mean-square of
‖W e_{2+j}‖ over the easy features.
"""
import dataclasses
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cl_jax import paths
from cl_jax.spec import ConfigError

LOSSES = ("scl", "ucl", "joint")


AUGMENTATIONS = ("imperfect", "good")


# ---------------------------------------------------------------------------------------------
# Data.

@dataclasses.dataclass
class Examples:
  """n examples: x [n, d] (without their easy features when `z` is redrawn per view, see
  `views`), y and s [n] in {±1}, z [n, k] in {±1}."""
  x: np.ndarray
  y: np.ndarray
  s: np.ndarray
  z: np.ndarray


def feature_layout(c) -> dict:
  """Coordinates: e1 = 0 (class), e2 = 1 (subclass), easy features 2..2+k, noise the rest."""
  k = c.num_easy
  return {"class": 0, "subclass": 1, "easy": np.arange(2, 2 + k), "noise": np.arange(2 + k, c.d)}


def compose(c, y, s, z, noise) -> np.ndarray:
  """x = a_c·y·e1 + a_s·s·e2 + a_e·Σ z_j e_{2+j} + ξ."""
  layout = feature_layout(c)
  x = np.zeros((len(y), c.d))
  x[:, 0] = c.a_class * y
  x[:, 1] = c.a_sub * s
  x[:, layout["easy"]] = c.a_easy * z
  x[:, layout["noise"]] = noise
  return x


def sample_examples(c, n: int, rng: np.random.Generator, balanced: bool) -> Examples:
  """n examples; `balanced`: (y, s) cycles through (+,+), (+,−), (−,+), (−,−)."""
  if balanced:
    y = np.tile([1.0, 1.0, -1.0, -1.0], -(-n // 4))[:n]
    s = np.tile([1.0, -1.0, 1.0, -1.0], -(-n // 4))[:n]
  else:
    y = rng.choice([-1.0, 1.0], n)
    s = rng.choice([-1.0, 1.0], n)
  z = rng.choice([-1.0, 1.0], (n, c.num_easy))
  d_noise = c.d - 2 - c.num_easy
  noise = rng.normal(0.0, c.noise / np.sqrt(d_noise), (n, d_noise))
  return Examples(compose(c, y, s, z, noise), y, s, z)


# ---------------------------------------------------------------------------------------------
# Losses: closed form and sampled.

def moment_factors(train: Examples, c, loss: str, augmentation: str, beta: float = 0.5):
  """(F_A, F_Σ) with A = F_A F_Aᵀ and Σ = F_Σ F_Σᵀ, the moments of the closed-form loss
  −2·tr(WAWᵀ) + ‖WΣWᵀ‖_F² on the training set (module docstring)."""
  easy = feature_layout(c)["easy"]
  mean_view = train.x.copy()
  n = len(mean_view)
  noise_columns = np.zeros((c.d, 0))
  if augmentation == "good":  # z redrawn per view: E[view] has no easy part, Cov = a_e²·I_easy
    mean_view[:, easy] = 0.0
    noise_columns = np.zeros((c.d, len(easy)))
    noise_columns[easy, np.arange(len(easy))] = c.a_easy
  f_ucl = mean_view.T / np.sqrt(n)
  f_sigma = np.concatenate([f_ucl, noise_columns], axis=1)
  f_scl = np.stack([np.sqrt(np.sum(train.y == label) / n) * mean_view[train.y == label].mean(0)
                    for label in (-1.0, 1.0) if np.any(train.y == label)], axis=1)
  f_a = {"ucl": f_ucl, "scl": f_scl,
         "joint": np.concatenate([np.sqrt(beta) * f_scl, np.sqrt(1 - beta) * f_ucl], axis=1)}
  return f_a[loss], f_sigma


def moments(train: Examples, c, loss: str, augmentation: str, beta: float = 0.5):
  """(A, Σ) of the closed-form loss −2·tr(WAWᵀ) + ‖WΣWᵀ‖_F² on the training set."""
  f_a, f_sigma = moment_factors(train, c, loss, augmentation, beta)
  return f_a @ f_a.T, f_sigma @ f_sigma.T


def spectral_loss(w: jax.Array, a: jax.Array, sigma: jax.Array) -> jax.Array:
  """Closed-form spectral contrastive loss L(W) = −2·tr(W A Wᵀ) + ‖W Σ Wᵀ‖_F²."""
  return -2.0 * jnp.trace(w @ a @ w.T) + jnp.sum((w @ sigma @ w.T) ** 2)


def factored_spectral_loss(w: jax.Array, f_a: jax.Array, f_sigma: jax.Array) -> jax.Array:
  """`spectral_loss` with A = F_A F_Aᵀ, Σ = F_Σ F_Σᵀ: −2·‖W F_A‖_F² + ‖(W F_Σ)(W F_Σ)ᵀ‖_F²."""
  w_sigma = w @ f_sigma
  return -2.0 * jnp.sum((w @ f_a) ** 2) + jnp.sum((w_sigma @ w_sigma.T) ** 2)


def sampled_spectral_loss(w, v, v_pos, u, u_prime) -> jax.Array:
  """Monte-Carlo estimate −2·mean_i f(v_i)ᵀf(v⁺_i) + mean_i (f(u_i)ᵀf(u′_i))², rows = samples."""
  positive = jnp.sum((v @ w.T) * (v_pos @ w.T), axis=1)
  negative = jnp.sum((u @ w.T) * (u_prime @ w.T), axis=1)
  return -2.0 * jnp.mean(positive) + jnp.mean(negative ** 2)


def sample_pairs(key, train_x, train_y, train_z_free, c, loss: str, augmentation: str,
                 beta: float, batch: int):
  """(v, v⁺, u, u′) [batch, d] each: positive pairs of `loss` and independent views.
  train_z_free: training x with the easy coordinates zeroed (good augmentation redraws them).
  Joint: each pair is an SCL pair with probability β, else a UCL pair."""
  n = train_x.shape[0]
  easy = jnp.asarray(feature_layout(c)["easy"])
  k_i, k_j, k_kind, k_u, k_u2, k_views = jax.random.split(key, 6)
  i = jax.random.randint(k_i, (batch,), 0, n)
  # Partner from the same class: a uniform draw from the rows whose label equals y_i.
  same = (train_y[None, :] == train_y[i][:, None]).astype(jnp.float32)
  j_same = jax.random.categorical(k_j, jnp.log(same + 1e-30))
  scl_pair = {"scl": jnp.ones(batch, bool), "ucl": jnp.zeros(batch, bool),
              "joint": jax.random.bernoulli(k_kind, beta, (batch,))}[loss]
  j = jnp.where(scl_pair, j_same, i)
  u_i = jax.random.randint(k_u, (batch,), 0, n)
  u_j = jax.random.randint(k_u2, (batch,), 0, n)

  def views(rows, key):
    if augmentation == "imperfect":
      return train_x[rows]
    z = jax.random.rademacher(key, (rows.shape[0], easy.shape[0]), dtype=train_x.dtype)
    return train_z_free[rows].at[:, easy].set(c.a_easy * z)

  keys = jax.random.split(k_views, 4)
  return views(i, keys[0]), views(j, keys[1]), views(u_i, keys[2]), views(u_j, keys[3])


# ---------------------------------------------------------------------------------------------
# Minimisers and training.

def min_norm_minimizer(a: np.ndarray, sigma: np.ndarray, p: int, tol: float = 1e-9) -> np.ndarray:
  """W* [p, d] with W*ᵀW* = the minimum-norm minimiser of −2·tr(MA) + tr(MΣMΣ) over PSD M of
  rank ≤ p (module docstring): M* = Σ^+½ N_p Σ^+½, N_p the top-p eigen-part of B = Σ^+½AΣ^+½."""
  lam, q = np.linalg.eigh(sigma)
  keep = lam > tol * lam.max()
  q, lam = q[:, keep], lam[keep]
  inv_sqrt = q @ np.diag(lam ** -0.5) @ q.T  # Σ^+½
  b = inv_sqrt @ a @ inv_sqrt
  beig, bvec = np.linalg.eigh((b + b.T) / 2)
  order = np.argsort(-beig)
  beig, bvec = beig[order], bvec[:, order]
  positive = int(np.sum(beig > tol * max(beig[0], tol)))
  take = min(p, positive)
  if take < positive and abs(beig[take - 1] - beig[take]) <= 1e-6 * beig[0]:
    # A tie at the cut: among the tied eigenvectors take the directions of largest Σ-variance.
    tied = np.abs(beig - beig[take - 1]) <= 1e-6 * beig[0]
    first = int(np.argmax(tied))
    need = take - first
    t = bvec[:, tied]
    var, rot = np.linalg.eigh(t.T @ sigma @ t)
    chosen = t @ rot[:, np.argsort(-var)[:need]]
    vecs = np.concatenate([bvec[:, :first], chosen], axis=1)
    vals = np.concatenate([beig[:first], np.full(need, beig[take - 1])])
  else:
    vecs, vals = bvec[:, :take], beig[:take]
  w = np.zeros((p, a.shape[0]))
  w[:take] = np.diag(np.sqrt(vals)) @ vecs.T @ inv_sqrt
  return w


def other_minimizer_with_subclass(w_star: np.ndarray, sigma: np.ndarray, scale: float,
                                  tol: float = 1e-9) -> np.ndarray:
  """A minimiser of the same training loss that represents the subclass: W* with its first zero
  row replaced by scale·vᵀ, v = the part of e2 orthogonal to range Σ (so Σv = 0: the training
  loss is unchanged; vᵀx_test = a_s·s·vᵀe2 + vᵀξ carries the subclass)."""
  lam, q = np.linalg.eigh(sigma)
  in_range = q[:, lam > tol * lam.max()]
  e2 = np.zeros(sigma.shape[0])
  e2[1] = 1.0
  v = e2 - in_range @ (in_range.T @ e2)
  zero_rows = np.where(np.abs(w_star).sum(1) == 0)[0]
  if not len(zero_rows):
    raise ValueError("the embedding has no spare dimension (rank M* = p): use a larger p")
  w = w_star.copy()
  w[zero_rows[0]] = scale * v / np.linalg.norm(v)
  return w


def gd_trajectory(w0, a, sigma, *, lr: float, steps: int, record_every: int,
                  loss=spectral_loss):
  """Full-batch GD on the closed form `loss(w, a, sigma)` (dense moments; or their factors with
  `factored_spectral_loss`); returns the recorded steps and W [records, p, d]."""
  grad = jax.grad(loss)

  @jax.jit
  def run(w, a, sigma):
    def chunk(w, _):
      w = jax.lax.fori_loop(0, record_every, lambda _, w: w - lr * grad(w, a, sigma), w)
      return w, w
    return jax.lax.scan(chunk, w, None, length=steps // record_every)[1]

  ws = run(jnp.asarray(w0), jnp.asarray(a), jnp.asarray(sigma))
  return np.arange(1, steps // record_every + 1) * record_every, np.asarray(ws)


def sgd_trajectory(key, w0, train: Examples, c, loss: str, augmentation: str, beta: float, *,
                   lr: float, steps: int, batch: int, record_every: int):
  """Minibatch SGD on sampled pairs (`sample_pairs`); recorded steps and W [records, p, d]."""
  x = jnp.asarray(train.x)
  z_free = x.at[:, jnp.asarray(feature_layout(c)["easy"])].set(0.0)
  y = jnp.asarray(train.y)
  grad = jax.grad(sampled_spectral_loss)

  @jax.jit
  def run(w, key):
    def step(w, key):
      return w - lr * grad(w, *sample_pairs(key, x, y, z_free, c, loss, augmentation, beta,
                                            batch))

    def chunk(w, keys):
      w = jax.lax.fori_loop(0, record_every, lambda t, w: step(w, keys[t]), w)
      return w, w
    keys = jax.random.split(key, steps).reshape(steps // record_every, record_every, 2)
    return jax.lax.scan(chunk, w, keys)[1]

  ws = run(jnp.asarray(w0), key)
  return np.arange(1, steps // record_every + 1) * record_every, np.asarray(ws)


# ---------------------------------------------------------------------------------------------
# Measurement.

def probe_accuracies(w: np.ndarray, probe_train: Examples, probe_test: Examples) -> dict:
  """Test accuracy of logistic-regression probes for the class y and the subclass s on the
  representations W·x of fresh samples (features standardised on the probe's training set)."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  h_train, h_test = probe_train.x @ w.T, probe_test.x @ w.T
  mean, std = h_train.mean(0), h_train.std(0) + 1e-12
  h_train, h_test = (h_train - mean) / std, (h_test - mean) / std
  out = {}
  for name in ("y", "s"):
    labels_train, labels_test = getattr(probe_train, name), getattr(probe_test, name)
    if np.allclose(h_train, 0):
      out[name] = 0.5
      continue
    clf = linear_model.LogisticRegression(C=1.0, max_iter=1000).fit(h_train, labels_train)
    out[name] = float(clf.score(h_test, labels_test))
  return {"class_accuracy": out["y"], "subclass_accuracy": out["s"]}


def feature_weights(w: np.ndarray, c) -> dict:
  """‖W e1‖ (class), ‖W e2‖ (subclass) and the RMS of ‖W e_{2+j}‖ over the easy features."""
  easy = feature_layout(c)["easy"]
  norms = np.linalg.norm(w, axis=0)
  return {"class_weight": float(norms[0]), "subclass_weight": float(norms[1]),
          "easy_weight": float(np.sqrt(np.mean(norms[easy] ** 2))) if len(easy) else 0.0}


def evaluate(w, c, probe_train, probe_test) -> dict:
  return {**probe_accuracies(w, probe_train, probe_test), **feature_weights(w, c)}


# ---------------------------------------------------------------------------------------------
# The five claims.

def _setup(c, seed: int):
  rng = np.random.default_rng(seed)
  train = sample_examples(c, c.n, rng, balanced=c.balanced_labels)
  probe_train = sample_examples(c, c.num_probe, rng, balanced=False)
  probe_test = sample_examples(c, c.num_probe, rng, balanced=False)
  return rng, train, probe_train, probe_test


def _init(rng, c, p: int) -> np.ndarray:
  return rng.normal(0.0, c.init_scale, (p, c.d))


def dynamics_config(c) -> ml_collections.ConfigDict:
  """The config of claim 1: `c` with the fields of `c.dynamics` in place of its own."""
  cd = ml_collections.ConfigDict(c.to_dict())
  cd.update({k: v for k, v in c.dynamics.items() if k in cd})
  return cd


def learn_then_unlearn(steps, subclass_accuracy, rise: float, fall: float) -> dict:
  """Whether a subclass-probe curve (index 0: the initialisation) rises at least `rise` above its
  initial value and then ends at least `fall` below that peak, "end" being the mean of the last
  quarter of the curve (so that one noisy SGD dip after the peak is not an unlearning)."""
  curve = np.asarray(subclass_accuracy, float)
  peak = int(np.argmax(curve))
  end = float(curve[-max(1, -(-len(curve) // 4)):].mean())
  return {"detected": bool(curve[peak] - curve[0] >= rise and curve[peak] - end >= fall),
          "initial": float(curve[0]), "peak": float(curve[peak]), "peak_step": int(steps[peak]),
          "end": end}


def weight_rises_then_falls(steps, subclass_weight, rise: float = 2.0, fall: float = 0.5) -> dict:
  """Whether ‖W e2‖ along training grows to at least `rise` × its initial value and then ends
  (the mean of the last quarter, as in `learn_then_unlearn`) at most `fall` × its peak: claim 1
  as the paper states it, on the weight of the subclass direction."""
  curve = np.asarray(subclass_weight, float)
  peak = int(np.argmax(curve))
  end = float(curve[-max(1, -(-len(curve) // 4)):].mean())
  return {"detected": bool(curve[peak] >= rise * curve[0] and end <= fall * curve[peak]),
          "initial": float(curve[0]), "peak": float(curve[peak]), "peak_step": int(steps[peak]),
          "end": end}


def scl_dynamics(c, seed: int) -> dict:
  """Claim 1, in the regime of `c.dynamics`: probes along GD and SGD on SCL from a small
  initialisation, per seed whether the subclass is learned then unlearned, and the min-norm
  target."""
  c = dynamics_config(c)
  rng, train, probe_train, probe_test = _setup(c, seed)
  f_a, f_sigma = moment_factors(train, c, "scl", c.augmentation)
  w0 = _init(rng, c, c.p)
  steps, gd = gd_trajectory(w0, f_a, f_sigma, lr=c.lr, steps=c.steps,
                            record_every=c.record_every, loss=factored_spectral_loss)
  _, sgd = sgd_trajectory(jax.random.PRNGKey(seed), w0, train, c, "scl", c.augmentation, c.beta,
                          lr=c.lr, steps=c.steps, batch=c.batch_size,
                          record_every=c.record_every)
  out = {"step": [0, *steps.tolist()]}
  for name, ws in (("gd", gd), ("sgd", sgd)):
    if not np.all(np.isfinite(ws)):
      first = int(steps[np.argmin(np.all(np.isfinite(ws), axis=(1, 2)))])
      raise ConfigError(f"dynamics.lr={c.lr} is too large for claim 1's regime: {name.upper()} "
                        f"diverged (W not finite by step {first}, seed {seed}). Lower "
                        "dynamics.lr (e.g. by 5×) or weaken the features (dynamics.a_sub, "
                        "dynamics.noise).")
    records = [evaluate(w, c, probe_train, probe_test) for w in [w0, *ws]]
    out[name] = {k: [r[k] for r in records] for k in records[0]}
    out[name]["learn_then_unlearn"] = learn_then_unlearn(
        out["step"], out[name]["subclass_accuracy"], c.dynamics.rise, c.dynamics.fall)
    out[name]["weight_rises_then_falls"] = weight_rises_then_falls(
        out["step"], out[name]["subclass_weight"])
  out.update({k: v for k, v in out["gd"].items()
              if k not in ("learn_then_unlearn", "weight_rises_then_falls")})
  a, sigma = f_a @ f_a.T, f_sigma @ f_sigma.T
  w_star = min_norm_minimizer(a, sigma, c.p)
  m_star, m_gd = w_star.T @ w_star, gd[-1].T @ gd[-1]
  out["gd_to_min_norm_relative_distance"] = float(np.linalg.norm(m_gd - m_star) /
                                                   np.linalg.norm(m_star))
  out["min_norm"] = evaluate(w_star, c, probe_train, probe_test)
  return out


def learn_then_unlearn_summary(per_seed: list, key: str = "learn_then_unlearn") -> dict:
  """Over seeds, for GD and SGD: the fraction of seeds whose `key` test was detected (the probe's
  learn-then-unlearn, or "weight_rises_then_falls"), the median step of their peak, and each
  seed's numbers."""
  out = {}
  for name in ("gd", "sgd"):
    seeds = [r[name][key] for r in per_seed]
    peaks = [s["peak_step"] for s in seeds if s["detected"]]
    out[name] = {"fraction": float(np.mean([s["detected"] for s in seeds])),
                 "seeds": len(seeds), "median_peak_step": float(np.median(peaks)) if peaks
                 else None, "per_seed": seeds}
  return out


def scl_min_norm(c, seed: int) -> dict:
  """Claim 2: the min-norm SCL minimiser vs another minimiser of the same training loss."""
  _, train, probe_train, probe_test = _setup(c, seed)
  a, sigma = moments(train, c, "scl", c.augmentation)
  w_star = min_norm_minimizer(a, sigma, c.p)
  w_other = other_minimizer_with_subclass(w_star, sigma, scale=np.linalg.norm(w_star))
  loss = lambda w: float(spectral_loss(jnp.asarray(w), jnp.asarray(a), jnp.asarray(sigma)))
  return {**evaluate(w_star, c, probe_train, probe_test), "training_loss": loss(w_star),
          "norm": float(np.linalg.norm(w_star.T @ w_star)),
          "other_minimizer": {**evaluate(w_other, c, probe_train, probe_test),
                              "training_loss": loss(w_other),
                              "norm": float(np.linalg.norm(w_other.T @ w_other))}}


def scl_min_norm_by_n(c, seed: int) -> dict:
  """Claim 2 against the sample size: the min-norm SCL minimiser's subclass and class accuracy
  and its weight on the subclass feature ‖W e2‖ for each n of `c.claim2_sizes` (the rest of `c`
  unchanged). With random labels a finite sample gives each class mean a small subclass
  component ∝ 1/√n; the claim is about the population, so the subclass accuracy should fall to
  chance (0.5) as n grows."""
  out = {"n": list(c.claim2_sizes), "subclass_accuracy": [], "class_accuracy": [],
         "subclass_weight": []}
  for n in c.claim2_sizes:
    cn = ml_collections.ConfigDict(c.to_dict())
    cn.n = n
    _, train, probe_train, probe_test = _setup(cn, seed)
    a, sigma = moments(train, cn, "scl", cn.augmentation)
    result = evaluate(min_norm_minimizer(a, sigma, cn.p), cn, probe_train, probe_test)
    for k in ("subclass_accuracy", "class_accuracy", "subclass_weight"):
      out[k].append(result[k])
  return out


def ucl_embedding_size(c, seed: int) -> dict:
  """Claims 3 and 4: class accuracy of the min-norm UCL minimiser per embedding size, with
  imperfect and good augmentation; and with many diverse easy features at the largest size."""
  _, train, probe_train, probe_test = _setup(c, seed)
  out = {"embedding_size": list(c.embedding_sizes)}
  for augmentation in AUGMENTATIONS:
    a, sigma = moments(train, c, "ucl", augmentation)
    results = [evaluate(min_norm_minimizer(a, sigma, p), c, probe_train, probe_test)
               for p in c.embedding_sizes]
    out[f"{augmentation}_augmentation"] = [r["class_accuracy"] for r in results]
    out[f"{augmentation}_augmentation_weights"] = {
        k: [r[k] for r in results] for k in ("class_weight", "subclass_weight", "easy_weight")}
  # Many diverse irrelevant features at the largest embedding size.
  p = max(c.embedding_sizes)
  diverse = {"num_easy": list(c.diverse_num_easy)}
  for augmentation in AUGMENTATIONS:
    accuracies = []
    for k in c.diverse_num_easy:
      ck = ml_collections.ConfigDict(c.to_dict())
      ck.num_easy = k
      _, train_k, pt, pe = _setup(ck, seed)
      a, sigma = moments(train_k, ck, "ucl", augmentation)
      accuracies.append(evaluate(min_norm_minimizer(a, sigma, p), ck, pt, pe)["class_accuracy"])
    diverse[f"{augmentation}_augmentation"] = accuracies
  out["diverse_easy_features_at_largest_size"] = {"embedding_size": p, **diverse}
  return out


def _three_losses(c, seed: int) -> dict:
  _, train, probe_train, probe_test = _setup(c, seed)
  out = {}
  for loss in LOSSES:
    a, sigma = moments(train, c, loss, c.augmentation, c.beta)
    out[loss] = evaluate(min_norm_minimizer(a, sigma, c.p), c, probe_train, probe_test)
  return out


def joint(c, seed: int) -> dict:
  """Claim 5: min-norm minimisers of SCL, UCL and β·SCL + (1−β)·UCL at the config's setting, and
  the same comparison for each subclass strength in `joint_a_sub` (the regimes)."""
  out = _three_losses(c, seed)
  regimes = []
  for a_sub in c.joint_a_sub:
    ck = ml_collections.ConfigDict(c.to_dict())
    ck.a_sub = a_sub
    regimes.append({"a_sub": a_sub, **_three_losses(ck, seed)})
  out["regimes"] = regimes
  return out


def _mean_over_seeds(results: list):
  """Element-wise mean of nested dicts/lists of numbers over seeds (+ '_std' for scalars)."""
  first = results[0]
  if isinstance(first, dict):
    return {k: _mean_over_seeds([r[k] for r in results]) for k in first}
  if isinstance(first, list):
    if first and isinstance(first[0], float):
      return np.mean(np.asarray(results, float), axis=0).tolist()
    return first  # integers (steps, sizes) are the same for every seed
  if isinstance(first, float):
    return float(np.mean(results))
  return first


CLAIMS = {"scl_dynamics": scl_dynamics, "scl_min_norm": scl_min_norm,
          "scl_min_norm_by_n": scl_min_norm_by_n,
          "ucl_embedding_size": ucl_embedding_size, "joint": joint}
# The number of seeds of each claim (default: c.num_seeds).
CLAIM_SEEDS = {"scl_dynamics": lambda c: c.dynamics.num_seeds,
               "scl_min_norm_by_n": lambda c: c.claim2_num_seeds}


def run_claims(c) -> dict:
  """Every experiment, averaged over seeds 0..c.num_seeds−1 (per-seed results kept)."""
  out = {"settings": c.to_dict()}
  for name, fn in CLAIMS.items():
    seeds = CLAIM_SEEDS.get(name, lambda c: c.num_seeds)(c)
    per_seed = [fn(c, seed) for seed in range(seeds)]
    out[name] = {**_mean_over_seeds(per_seed), "per_seed": per_seed}
  dynamics = out["scl_dynamics"]
  for name in ("gd", "sgd"):  # per seed only: a mean of verdicts is the summary below
    dynamics[name].pop("learn_then_unlearn")
    dynamics[name].pop("weight_rises_then_falls")
  dynamics["learn_then_unlearn"] = learn_then_unlearn_summary(dynamics["per_seed"])
  dynamics["weight_rises_then_falls"] = learn_then_unlearn_summary(dynamics["per_seed"],
                                                                   "weight_rises_then_falls")
  dynamics["settings"] = dynamics_config(c).to_dict()
  out["verdicts"] = verdicts(out, c)
  return out


def verdicts(claims: Mapping, c) -> dict:
  """Each claim's direction, judged on the seed-mean numbers (thresholds in the texts)."""
  dyn, mn, ucl, jt = (claims["scl_dynamics"], claims["scl_min_norm"],
                      claims["ucl_embedding_size"], claims["joint"])
  sizes = list(ucl["embedding_size"])
  at_p = sizes.index(c.p) if c.p in sizes else 0
  small, large = ucl["imperfect_augmentation"][at_p], ucl["imperfect_augmentation"][-1]
  diverse = ucl["diverse_easy_features_at_largest_size"]
  by_n = np.asarray(claims["scl_min_norm_by_n"]["subclass_accuracy"]) - 0.5  # over chance
  return {
      "1_scl_learns_then_unlearns_subclass": bool(
          dyn["learn_then_unlearn"]["gd"]["fraction"] >= 0.5),
      "1_subclass_weight_rises_then_falls": bool(
          dyn["weight_rises_then_falls"]["gd"]["fraction"] >= 0.5),
      "2_min_norm_collapses_other_minimizer_does_not": bool(
          mn["subclass_accuracy"] <= 0.6 and mn["other_minimizer"]["subclass_accuracy"] >= 0.8
          and abs(mn["training_loss"] - mn["other_minimizer"]["training_loss"]) <= 1e-6 *
          max(1.0, abs(mn["training_loss"]))),
      "2_min_norm_subclass_falls_to_chance_as_n_grows": bool(
          by_n[-1] <= max(0.5 * by_n[0], 0.02)),
      "3_ucl_small_embedding_suppresses_class_larger_restores": bool(small <= 0.6 and
                                                                    large >= 0.8),
      "4a_good_augmentation_prevents_suppression_at_small_size": bool(
          ucl["good_augmentation"][at_p] >= 0.8),
      "4b_diverse_easy_features_suppress_at_largest_size": bool(
          diverse["imperfect_augmentation"][-1] <= 0.6 and
          diverse["good_augmentation"][-1] >= 0.8),
      "5_joint_keeps_class_and_subclass": bool(
          jt["joint"]["class_accuracy"] >= 0.8 and jt["joint"]["subclass_accuracy"] >= 0.8),
      "setting_scl_collapses_and_ucl_suppresses": bool(
          jt["scl"]["subclass_accuracy"] <= 0.6 and jt["ucl"]["class_accuracy"] <= 0.6),
  }


def _std(claim: Mapping, *keys) -> float:
  """Sample std over the claim's seeds of the number at `keys` (0 for one seed)."""
  values = []
  for run in claim["per_seed"]:
    for k in keys:
      run = run[k]
    values.append(run)
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _std_list(claim: Mapping, key: str) -> list:
  """Per position, the sample std over the claim's seeds of the list at `key`."""
  values = np.asarray([run[key] for run in claim["per_seed"]], float)
  return (np.std(values, axis=0, ddof=1) if len(values) > 1 else 0 * values[0]).tolist()


def summary_text(claims: Mapping) -> str:
  dyn, mn, ucl, jt, v = (claims["scl_dynamics"], claims["scl_min_norm"],
                         claims["ucl_embedding_size"], claims["joint"], claims["verdicts"])
  s, sd = claims["settings"], dyn["settings"]
  sub = dyn["subclass_accuracy"]
  peak = int(np.argmax(sub))
  ltu = dyn["learn_then_unlearn"]
  mark = lambda ok: "HOLDS" if ok else "does NOT hold"

  def seeds(name):
    r = ltu[name]
    at = (f", median peak at step {r['median_peak_step']:.0f}" if r["median_peak_step"]
          is not None else "")
    return f"{round(r['fraction'] * r['seeds'])}/{r['seeds']} seeds with {name.upper()}{at}"

  def weight_seeds(name):
    r = dyn["weight_rises_then_falls"][name]
    return f"{round(r['fraction'] * r['seeds'])}/{r['seeds']} seeds with {name.upper()}"

  labels = "balanced" if sd["balanced_labels"] else "random"
  lines = [
      f"Xue et al. (2023) simplicity-bias claims on a linear model: n={s['n']}, d={s['d']}, "
      f"p={s['p']}, a_class={s['a_class']}, a_sub={s['a_sub']}, {s['num_easy']} easy features "
      f"of strength {s['a_easy']}, noise {s['noise']}, "
      f"{'balanced' if s['balanced_labels'] else 'random'} training labels, {s['num_seeds']} "
      "seed(s) (accuracies: logistic probes on fresh test samples, seed means ± sample std).",
      f"1. SCL (S)GD learns then unlearns the subclass: {mark(v['1_scl_learns_then_unlearns_subclass'])}"
      f" — the subclass probe rises >= {sd['dynamics']['rise']} above its initial value and ends "
      f"(last quarter) >= {sd['dynamics']['fall']} below its peak in {seeds('gd')}, and in "
      f"{seeds('sgd')} "
      f"(batch {sd['batch_size']}); regime n={sd['n']}, d={sd['d']}, p={sd['p']}, "
      f"a_class={sd['a_class']}, a_sub={sd['a_sub']}, {sd['num_easy']} easy features, noise "
      f"{sd['noise']}, {labels} training labels, init {sd['init_scale']}, lr {sd['lr']}, "
      f"{sd['steps']} steps. Seed means: GD subclass accuracy {sub[0]:.3f} at init, "
      f"{sub[peak]:.3f} at step {dyn['step'][peak]}, {sub[-1]:.3f} at step {dyn['step'][-1]} "
      f"(class {dyn['class_accuracy'][-1]:.3f}). The paper's claim is about the weight ‖W e2‖ of "
      f"the subclass direction (the probe measures its effect): per seed it rises >= 2× and ends "
      f"(last quarter) <= ½ its peak in {weight_seeds('gd')} and {weight_seeds('sgd')}: "
      f"{mark(v['1_subclass_weight_rises_then_falls'])}; seed means ‖We2‖ "
      f"{dyn['subclass_weight'][0]:.2e} → {max(dyn['subclass_weight']):.2e} → "
      f"{dyn['subclass_weight'][-1]:.2e} (it does not reach 0: the min-norm M* keeps a "
      f"finite-sample subclass weight, claim 2's n axis); GD ends "
      f"{dyn['gd_to_min_norm_relative_distance']:.3f} (relative) from the min-norm M*, whose "
      f"subclass accuracy is {dyn['min_norm']['subclass_accuracy']:.3f}.",
      f"2. min-norm SCL minimiser collapses subclasses, another minimiser does not, at n={s['n']} "
      "(one sample; the claim is about the population, its verdict is the n axis below): "
      f"{mark(v['2_min_norm_collapses_other_minimizer_does_not'])} — subclass accuracy "
      f"{mn['subclass_accuracy']:.3f} ± {_std(mn, 'subclass_accuracy'):.3f} (class "
      f"{mn['class_accuracy']:.3f}) vs {mn['other_minimizer']['subclass_accuracy']:.3f} ± "
      f"{_std(mn, 'other_minimizer', 'subclass_accuracy'):.3f} at the same training loss "
      f"({mn['training_loss']:.6f} vs {mn['other_minimizer']['training_loss']:.6f}).",
      "   against n (min-norm SCL, {} seeds): ".format(claims["settings"]["claim2_num_seeds"])
      + "; ".join(f"n={n}: subclass {acc:.3f} ± {sd:.3f}, ‖We2‖ {w:.3f}" for n, acc, sd, w in zip(
          claims["scl_min_norm_by_n"]["n"], claims["scl_min_norm_by_n"]["subclass_accuracy"],
          _std_list(claims["scl_min_norm_by_n"], "subclass_accuracy"),
          claims["scl_min_norm_by_n"]["subclass_weight"]))
      + f": falls to chance (0.5) as n grows (claim 2's verdict): "
      f"{mark(v['2_min_norm_subclass_falls_to_chance_as_n_grows'])} (the excess over chance at "
      "the largest n is at most half that at the smallest, or 0.02).",
      f"3. UCL, imperfect augmentation: class accuracy per embedding size "
      f"{dict(zip(ucl['embedding_size'], [round(x, 3) for x in ucl['imperfect_augmentation']]))}"
      f": {mark(v['3_ucl_small_embedding_suppresses_class_larger_restores'])}.",
      f"4a. good augmentation: {dict(zip(ucl['embedding_size'], [round(x, 3) for x in ucl['good_augmentation']]))}"
      f": {mark(v['4a_good_augmentation_prevents_suppression_at_small_size'])}.",
      f"4b. many diverse easy features at p={ucl['diverse_easy_features_at_largest_size']['embedding_size']}"
      f" (num_easy {ucl['diverse_easy_features_at_largest_size']['num_easy']}): imperfect "
      f"{[round(x, 3) for x in ucl['diverse_easy_features_at_largest_size']['imperfect_augmentation']]}"
      f", good {[round(x, 3) for x in ucl['diverse_easy_features_at_largest_size']['good_augmentation']]}"
      f": {mark(v['4b_diverse_easy_features_suppress_at_largest_size'])}.",
      "5. joint loss (β={}): ".format(s["beta"]) + "; ".join(
          f"{k} class {jt[k]['class_accuracy']:.3f} / subclass {jt[k]['subclass_accuracy']:.3f}"
          for k in LOSSES) + f": {mark(v['5_joint_keeps_class_and_subclass'])}; in this setting "
      f"SCL collapses AND UCL suppresses: {v['setting_scl_collapses_and_ucl_suppresses']}"
      + ("" if v["setting_scl_collapses_and_ucl_suppresses"] else
         f" (SCL's subclass accuracy {jt['scl']['subclass_accuracy']:.3f} at n={s['n']} is the "
         "finite-sample subclass component of claim 2's n axis above)") + ".",
      "   by subclass strength (class / subclass accuracy): " + "; ".join(
          f"a_sub={r['a_sub']}: " + ", ".join(
              f"{k} {r[k]['class_accuracy']:.2f}/{r[k]['subclass_accuracy']:.2f}"
              for k in LOSSES) for r in jt["regimes"]),
  ]
  return "\n".join(lines) + "\n"


def plot_claims(claims: Mapping, workdir):
  """dynamics.png (probe accuracies and weights along GD/SGD on SCL) and suppression.png (class
  accuracy vs embedding size; joint vs SCL vs UCL)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  dyn = claims["scl_dynamics"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
  for name, style in (("gd", "-"), ("sgd", "--")):
    for i, run in enumerate(dyn["per_seed"]):
      label = name.upper() if i == 0 else None
      detected = run[name]["learn_then_unlearn"]["detected"]
      axes[0 if name == "gd" else 1].plot(dyn["step"], run[name]["subclass_accuracy"], style,
                                          color="C1" if detected else "C7", lw=0.9, alpha=0.8,
                                          label=label)
      axes[2].plot(dyn["step"], run[name]["subclass_weight"], style, color="C1", lw=0.7,
                   alpha=0.6, label=f"‖W e2‖ ({label})" if label else None)
      axes[2].plot(dyn["step"], run[name]["class_weight"], style, color="C0", lw=0.7, alpha=0.6,
                   label=f"‖W e1‖ ({label})" if label else None)
  ltu = dyn["learn_then_unlearn"]
  for ax, name in ((axes[0], "gd"), (axes[1], "sgd")):
    ax.set(xlabel="step", ylabel="subclass probe test accuracy", ylim=(0.4, 1.02),
           title=f"SCL {name.upper()}: learns then unlearns in "
                 f"{round(ltu[name]['fraction'] * ltu[name]['seeds'])}/{ltu[name]['seeds']} seeds "
                 "(orange)")
  axes[2].set(xlabel="step", ylabel="weight", yscale="log", title="feature weights per seed")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  paths.save_figure(fig, workdir / "dynamics.png")

  ucl, jt = claims["ucl_embedding_size"], claims["joint"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for augmentation in AUGMENTATIONS:
    axes[0].plot(ucl["embedding_size"], ucl[f"{augmentation}_augmentation"], "o-",
                 label=f"{augmentation} augmentation")
  axes[0].set(xscale="log", xlabel="embedding size p", ylabel="class accuracy",
              ylim=(0.4, 1.02), title="UCL min-norm minimiser: feature suppression")
  x = np.arange(len(LOSSES))
  axes[1].bar(x - 0.2, [jt[k]["class_accuracy"] for k in LOSSES], 0.4, label="class")
  axes[1].bar(x + 0.2, [jt[k]["subclass_accuracy"] for k in LOSSES], 0.4, label="subclass")
  axes[1].set(xticks=x, xticklabels=list(LOSSES), ylim=(0.4, 1.02), ylabel="probe accuracy",
              title="min-norm minimisers at one setting")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  paths.save_figure(fig, workdir / "suppression.png")


def check_config(c):
  """Raise `ConfigError` for settings the simulator cannot run."""
  if c.augmentation not in AUGMENTATIONS:
    raise ConfigError(f"augmentation={c.augmentation!r} is not one of: "
                      f"{', '.join(AUGMENTATIONS)}.")
  if not 0 <= c.beta <= 1:
    raise ConfigError(f"beta={c.beta} must be in [0, 1].")
  for field in ("n", "p", "steps", "record_every", "batch_size", "num_probe", "num_seeds"):
    if c[field] <= 0:
      raise ConfigError(f"{field}={c[field]} must be > 0.")
  if c.balanced_labels and c.n % 4:
    raise ConfigError(f"n={c.n} must be a multiple of 4 with balanced_labels=True (balanced "
                      "classes and subclasses).")
  unknown = sorted(set(c.dynamics) - set(c) - {"num_seeds", "rise", "fall"})
  if unknown:
    raise ConfigError(f"dynamics.{unknown[0]} is not a simulator field: dynamics may override "
                      f"{', '.join(sorted(c))} and set num_seeds, rise, fall.")
  if c.dynamics.steps % c.dynamics.record_every:
    raise ConfigError(f"dynamics.steps={c.dynamics.steps} must be a multiple of "
                      f"dynamics.record_every={c.dynamics.record_every}.")
  if c.steps % c.record_every:
    raise ConfigError(f"steps={c.steps} must be a multiple of record_every={c.record_every}.")
  needed = 2 + max(c.num_easy, *c.diverse_num_easy) + 1
  if c.d < needed:
    raise ConfigError(f"d={c.d} is too small: the features need {needed - 1} coordinates plus "
                      "noise dimensions; the theory's regime is d ≫ n.")
  if c.p < 3:
    raise ConfigError(f"p={c.p} must be >= 3: the SCL minimisers use 2 dimensions and the "
                      "other minimiser of claim 2 a third.")
  if min(c.embedding_sizes) < 1 or list(c.embedding_sizes) != sorted(c.embedding_sizes):
    raise ConfigError(f"embedding_sizes={list(c.embedding_sizes)} must be increasing and >= 1.")


def run(c, workdir) -> dict:
  """Run every claim, write claims.json, summary.txt, dynamics.png and suppression.png."""
  check_config(c)
  workdir = paths.workdir_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.time()
  claims = run_claims(c)
  claims["wall_seconds"] = time.time() - start
  paths.write_json(workdir / "claims.json", claims)
  (workdir / "summary.txt").write_text(summary_text(claims))
  plot_claims(claims, workdir)
  return claims


def main(argv):
  del argv
  import sys  # pylint: disable=g-import-not-at-top
  from cl_jax import cli  # pylint: disable=g-import-not-at-top
  cli.setup()
  claims = run(_CONFIG.value, _WORKDIR.value)
  claims["command"] = " ".join(["python -m cl_jax.theory", *sys.argv[1:]])
  claims["date"] = time.strftime("%Y-%m-%d")
  paths.write_json(paths.workdir_path(_WORKDIR.value) / "claims.json", claims)
  print(summary_text(claims), end="")
  print(f"wrote {_WORKDIR.value}/claims.json, summary.txt, dynamics.png, suppression.png "
        f"({claims['wall_seconds']:.1f} s)")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from cl_jax import cli  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/theory.py", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (local or gs://).")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
