"""Contrastive losses as pure functions of arrays (docs/method.md §1).

Every function here works on the GLOBAL batch: under `jax.jit` over a sharded batch the
negatives span all devices without any hand-written collective.

Shapes: z1, z2 are [N, d] projection-head outputs of the two views of the same N examples.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(‖x‖, eps) along `axis`."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def _multi_positive_loss(z1, z2, positives, temperature, epsilon):
  """mean over anchors i with |P(i)| > 0 of −(1/|P(i)|) Σ_{p∈P(i)} log softmax_{k≠i}(S_i)[p],
  where S_ik = (cos(z_i, z_k) − ε) / τ for positives and (cos + ε) / τ for negatives (IFM).
  z = [z1; z2] (2N×d); `positives` is the 2N×2N boolean P with a False diagonal."""
  n2 = 2 * z1.shape[0]
  z = l2_normalize(jnp.concatenate([z1, z2], axis=0))
  sim = z @ z.T + jnp.where(positives, -epsilon, epsilon)
  logits = jnp.where(jnp.eye(n2, dtype=bool), -jnp.inf, sim / temperature)
  log_prob = jax.nn.log_softmax(logits, axis=1)
  num_pos = positives.sum(axis=1)
  per_anchor = -jnp.where(positives, log_prob, 0.0).sum(axis=1) / jnp.maximum(num_pos, 1)
  has_pos = num_pos > 0
  return jnp.sum(jnp.where(has_pos, per_anchor, 0.0)) / jnp.maximum(has_pos.sum(), 1)


def with_ifm(loss_at, epsilon: float, alpha: float) -> jax.Array:
  """Implicit feature modification (Robinson et al. 2021; docs/method.md §1.4):
  L_IFM = (L + α·L_ε) / (1 + α), where L_ε is the loss with every positive cosine similarity
  lowered by ε and every negative one raised by ε before dividing by τ (the closed form of an
  ε-ball adversarial perturbation of normalised embeddings). ε = 0 returns exactly L.
  `loss_at(eps)` computes the loss at perturbation eps."""
  if epsilon == 0:
    return loss_at(0.0)
  return (loss_at(0.0) + alpha * loss_at(epsilon)) / (1.0 + alpha)


def ntxent(z1: jax.Array, z2: jax.Array, temperature: float, *, ifm_epsilon: float = 0.0,
           ifm_alpha: float = 1.0) -> jax.Array:
  """NT-Xent (SimCLR, Chen et al. 2020), mean over the 2N anchors.

  Z = normalize([z1; z2]) (2N×d), S = Z Zᵀ / τ with the diagonal masked out. Anchor i's positive
  is its other view pos(i) = i ± N; the other 2N−2 rows are negatives:

      L = (1/2N) Σ_i −log( exp(S_i,pos(i)) / Σ_{k≠i} exp(S_ik) ).

  The official TF SimCLR code sums the two directions, i.e. reports 2× this value. At
  initialisation (random embeddings) L ≈ log(2N−1). `ifm_epsilon` > 0 applies IFM (`with_ifm`).

  Args:
    z1, z2: [N, d] embeddings of view 1 and view 2 (row i of both come from example i).
    temperature: τ > 0.
  Returns:
    Scalar loss.
  """
  n = z1.shape[0]
  other_view = jnp.roll(jnp.eye(2 * n, dtype=bool), n, axis=1)
  return with_ifm(lambda eps: _multi_positive_loss(z1, z2, other_view, temperature, eps),
                  ifm_epsilon, ifm_alpha)


def ntxent_cross_view(z1: jax.Array, z2: jax.Array, temperature: float, *,
                      ifm_epsilon: float = 0.0, ifm_alpha: float = 1.0) -> jax.Array:
  """NT-Xent on the N×N cross-view logits only (the randbits_mnist colab's form): no negatives
  from the anchor's own view. With ẑ = ℓ2-normalised z and S = ẑ1 ẑ2ᵀ / τ,

      L = ½ [ mean_i −log softmax(S_i·)[i] + mean_i −log softmax(S_·i)[i] ],

  i.e. each view's row i must pick row i of the other view among the other view's N rows. IFM
  lowers the positive (diagonal) cosine by ε and raises the others by ε before dividing by τ."""
  n = z1.shape[0]
  cos = l2_normalize(z1) @ l2_normalize(z2).T
  targets = jnp.arange(n)

  def loss_at(eps):
    logits = (cos + jnp.where(jnp.eye(n, dtype=bool), -eps, eps)) / temperature
    ce = optax.losses.softmax_cross_entropy_with_integer_labels
    return 0.5 * (ce(logits, targets).mean() + ce(logits.T, targets).mean())
  return with_ifm(loss_at, ifm_epsilon, ifm_alpha)


def supcon(z1: jax.Array, z2: jax.Array, labels: jax.Array, temperature: float, *,
           ifm_epsilon: float = 0.0, ifm_alpha: float = 1.0) -> jax.Array:
  """Supervised contrastive loss SCL (Khosla et al. 2020, L_out; docs/method.md §1.2).

  Same S as `ntxent`; for anchor i, P(i) = every other row with the same label (its other view
  included): L = mean_i −(1/|P(i)|) Σ_{p∈P(i)} log softmax_{k≠i}(S_i)[p]. With all labels
  distinct this is exactly NT-Xent. IFM shifts positives (same label) by −ε, negatives by +ε.

  Args:
    z1, z2: [N, d] embeddings of the two views; labels: [N] integer labels.
  """
  y = jnp.concatenate([labels, labels])
  positives = (y[:, None] == y[None, :]) & ~jnp.eye(y.shape[0], dtype=bool)
  return with_ifm(lambda eps: _multi_positive_loss(z1, z2, positives, temperature, eps),
                  ifm_epsilon, ifm_alpha)


def joint(z1: jax.Array, z2: jax.Array, labels: jax.Array, temperature: float, beta: float,
          **ifm) -> jax.Array:
  """Joint loss of Xue et al. (2023): β·SCL + (1 − β)·UCL, UCL = NT-Xent (docs/method.md §1.3).
  β = 1 → SCL (class collapse), β = 0 → UCL (feature suppression)."""
  return (beta * supcon(z1, z2, labels, temperature, **ifm) +
          (1 - beta) * ntxent(z1, z2, temperature, **ifm))


def moco_infonce(q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float, *,
                 ifm_epsilon: float = 0.0, ifm_alpha: float = 1.0) -> jax.Array:
  """MoCo InfoNCE (He et al. 2020; docs/method.md §1.7): logits [q·k⁺, q·queue] / τ, target 0, with q, k
  ℓ2-normalised and `queue` [K, d] the (normalised) keys of earlier batches. IFM: the positive
  logit (q·k⁺ − ε)/τ, the negatives (q·queue + ε)/τ.

  Args:
    q: [N, d] queries; k: [N, d] keys (constants: from the momentum encoder); queue: [K, d].
  """
  q, k = l2_normalize(q), l2_normalize(jax.lax.stop_gradient(k))
  l_pos = jnp.sum(q * k, axis=1, keepdims=True)
  l_neg = q @ jax.lax.stop_gradient(queue).T

  def loss_at(eps):
    logits = jnp.concatenate([l_pos - eps, l_neg + eps], axis=1) / temperature
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(
        logits, jnp.zeros(q.shape[0], jnp.int32)))
  return with_ifm(loss_at, ifm_epsilon, ifm_alpha)


# ------------------------------------------------------------------------------------------------
# Non-contrastive losses (docs/method.md §1.9): no negatives; collapse is avoided by a predictor
# with a stop-gradient or a target network (BYOL, SimSiam), or by statistics of the batch that
# decorrelate the embedding's dimensions (Barlow Twins, VICReg).

def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """−mean_i cos(p_i, z_i): the piece BYOL and SimSiam share (Chen & He 2021's D(p, z)).

  The callers put the stop-gradient on z (the target branch); BYOL's 2 − 2·cos(p, z) per pair is
  2 + 2·negative_cosine(p, z).

  Args:
    p: [N, d] predictor outputs; z: [N, d] target projections.
  """
  return -jnp.mean(jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1))


def batch_standardize(z: jax.Array, eps: float = 1e-5) -> jax.Array:
  """(z − mean) / sqrt(var + eps) per dimension over the batch, var biased (1/N): BatchNorm
  without affine parameters in training mode, as Barlow Twins' official code normalises z."""
  mean = jnp.mean(z, axis=0)
  var = jnp.mean(jnp.square(z - mean), axis=0)
  return (z - mean) * jax.lax.rsqrt(var + eps)


def off_diagonal(m: jax.Array) -> jax.Array:
  """The d(d−1) off-diagonal elements of a square matrix, flattened."""
  return m[~np.eye(m.shape[0], dtype=bool)]  # a constant mask: static shapes under jit


def barlow_twins(z1: jax.Array, z2: jax.Array, lambd: float) -> jax.Array:
  """Barlow Twins (Zbontar et al. 2021), as its official code computes it:

      c = z̃1ᵀ z̃2 / N,   L = Σ_i (1 − c_ii)² + λ Σ_{i≠j} c_ij²,

  z̃ = `batch_standardize`(z) (BatchNorm without affine over the GLOBAL batch), c the d×d
  cross-correlation of the two views' embeddings. The invariance term pulls c_ii to 1, the
  redundancy-reduction term (λ = 5e-3 in the paper) pushes the other entries to 0.

  Args:
    z1, z2: [N, d] projector outputs of the two views (not normalised).
    lambd: λ ≥ 0.
  """
  c = batch_standardize(z1).T @ batch_standardize(z2) / z1.shape[0]
  return jnp.sum(jnp.square(1.0 - jnp.diag(c))) + lambd * jnp.sum(jnp.square(off_diagonal(c)))


def vicreg(z1: jax.Array, z2: jax.Array, sim_coeff: float = 25.0, std_coeff: float = 25.0,
           cov_coeff: float = 1.0) -> jax.Array:
  """VICReg (Bardes et al. 2022), as its official code computes it, on the GLOBAL batch:

      L = sim·mean((z1 − z2)²)
        + std·½[mean_j relu(1 − s1_j) + mean_j relu(1 − s2_j)],   s_j = sqrt(Var_j(z) + 1e-4)
        + cov·[Σ_{i≠j} C1_ij² + Σ_{i≠j} C2_ij²] / d,               C = (z − z̄)ᵀ(z − z̄) / (N − 1)

  with unbiased variances (N − 1). The invariance term is the mean over the N·d elements; the
  variance hinge keeps every dimension's std ≥ 1 (no collapse), the covariance term decorrelates
  the dimensions. Paper defaults: sim = std = 25, cov = 1.

  Args:
    z1, z2: [N, d] expander outputs of the two views (not normalised).
  """
  n, d = z1.shape
  invariance = jnp.mean(jnp.square(z1 - z2))

  def variance_and_covariance(z):
    z = z - jnp.mean(z, axis=0)
    std = jnp.sqrt(jnp.sum(jnp.square(z), axis=0) / (n - 1) + 1e-4)
    cov = z.T @ z / (n - 1)
    return jnp.mean(jax.nn.relu(1.0 - std)) / 2, jnp.sum(jnp.square(off_diagonal(cov))) / d

  v1, c1 = variance_and_covariance(z1)
  v2, c2 = variance_and_covariance(z2)
  return sim_coeff * invariance + std_coeff * (v1 + v2) + cov_coeff * (c1 + c2)


# ------------------------------------------------------------------------------------------------
# Generalized contrastive loss (Chen, Luo, Li 2021; docs/method.md §1.5, §1.6)

PRIORS = ("logsumexp", "uniform_hypersphere", "gaussian", "uniform_hypercube")


def sliced_wasserstein(x: jax.Array, y: jax.Array, projections: jax.Array) -> jax.Array:
  """Mean over projection directions of the squared 1-D Wasserstein-2 distance.

  SWD(x, y) = (1/P) Σ_p (1/n) Σ_i (sort(x w_p)_i − sort(y w_p)_i)²

  i.e. the square of the usual SWD_2 with these directions (equal sample counts, uniform weights:
  the 1-D optimal coupling pairs order statistics).

  Args:
    x, y: [n, d] samples.
    projections: [d, P] matrix whose columns are the directions w_p.
  Returns:
    Scalar; differentiable in x (and y, projections).
  """
  px = jnp.sort(x @ projections, axis=0)
  py = jnp.sort(y @ projections, axis=0)
  return jnp.mean((px - py) ** 2)


def random_orthogonal(key: jax.Array, d: int) -> jax.Array:
  """A d×d random orthogonal matrix (Haar): QR of a Gaussian matrix, Q·sign(diag R)."""
  q, r = jnp.linalg.qr(jax.random.normal(key, (d, d)))
  return q * jnp.sign(jnp.diag(r))[None, :]


def sample_prior(key: jax.Array, prior: str, shape) -> jax.Array:
  """Samples of `prior`: 'gaussian' N(0, 1); 'uniform_hypercube' U(−1, 1)^d; 'uniform_hypersphere'
  normalised Gaussian (uniform on the unit sphere S^{d−1})."""
  if prior == "gaussian":
    return jax.random.normal(key, shape)
  if prior == "uniform_hypercube":
    return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)
  if prior == "uniform_hypersphere":
    return l2_normalize(jax.random.normal(key, shape))
  raise ValueError(f"Unknown prior {prior!r}; choose from {PRIORS[1:]}.")


def prior_matching(h: jax.Array, prior_samples: jax.Array, projections: jax.Array) -> jax.Array:
  """SWD from h to prior samples; gradients flow into h only (samples/projections constant)."""
  return sliced_wasserstein(h, jax.lax.stop_gradient(prior_samples),
                            jax.lax.stop_gradient(projections))


def generalized(h1: jax.Array, h2: jax.Array, key: jax.Array, *, lam: float, temperature: float,
                prior: str, hidden_norm: bool, scale: float = 1.0) -> jax.Array:
  """Generalized contrastive loss  L = scale · (L_align + λ · L_dist)  (docs/method.md §1.5).

  h1, h2: [N, d] representations of the two views (in training: the projection-head outputs),
  ℓ2-normalised first when `hidden_norm`.
  L_align = mean over the N·d elements of (h1 − h2)² / 2.
  L_dist with H = [h1; h2] (2N×d):
    'logsumexp' (decoupled NT-Xent, uniform-hypersphere prior): S = H Hᵀ (no masking),
        L_dist = mean_i logsumexp_k(S_ik / τ) − log d   (the constant only shifts the value);
    'gaussian' / 'uniform_hypercube' / 'uniform_hypersphere': the sliced-Wasserstein distance
        between H and 2N prior samples, projected on the columns of a fresh random d×d orthogonal
        matrix; prior samples and projections are drawn from `key` (the step's key) and are
        constants for the gradient. With `hidden_norm` the prior samples are ℓ2-normalised too,
        as in the reference colab (generalized_contrastive_loss), so there 'gaussian' and
        'uniform_hypersphere' coincide. Use hidden_norm=True with 'uniform_hypersphere'.
  Scale: with normalised h, L_align = (1 − mean cos)/d, so 'logsumexp' with λ = τ/d and
  scale = d equals τ·NT-Xent up to the masked diagonal and a constant (docs/method.md §1.5).
  """
  if hidden_norm:
    h1, h2 = l2_normalize(h1), l2_normalize(h2)
  d = h1.shape[-1]
  align = jnp.mean((h1 - h2) ** 2) / 2
  h = jnp.concatenate([h1, h2], axis=0)
  if prior == "logsumexp":
    dist = jnp.mean(jax.nn.logsumexp(h @ h.T / temperature, axis=1)) - jnp.log(d)
  else:
    key_prior, key_proj = jax.random.split(key)
    samples = sample_prior(key_prior, prior, h.shape)
    if hidden_norm:
      samples = l2_normalize(samples)
    dist = prior_matching(h, samples, random_orthogonal(key_proj, d))
  return scale * (align + lam * dist)


# ------------------------------------------------------------------------------------------------
# Representation metrics (Wang & Isola 2020; docs/method.md §1.8)

def alignment(z1: jax.Array, z2: jax.Array, alpha: float = 2.0) -> jax.Array:
  """E ‖ẑ1 − ẑ2‖^α over positive pairs of normalised embeddings (lower = better aligned)."""
  return jnp.mean(jnp.linalg.norm(l2_normalize(z1) - l2_normalize(z2), axis=-1) ** alpha)


def uniformity(z: jax.Array, t: float = 2.0) -> jax.Array:
  """log E_{i≠j} exp(−t ‖ẑ_i − ẑ_j‖²) over distinct pairs (lower = more uniform)."""
  z = l2_normalize(z)
  n = z.shape[0]
  sq = jnp.maximum(2.0 - 2.0 * z @ z.T, 0.0)
  off_diagonal = ~jnp.eye(n, dtype=bool)
  return jax.nn.logsumexp(jnp.where(off_diagonal, -t * sq, -jnp.inf)) - jnp.log(n * (n - 1))


def embedding_std(z: jax.Array) -> jax.Array:
  """mean_j std_i(ẑ_ij) of the ℓ2-normalised embeddings ẑ = z/‖z‖ (Chen & He 2021, §4.1): about
  1/√d for embeddings spread over the sphere, 0 when every example maps to one point (collapse)."""
  return jnp.mean(jnp.std(l2_normalize(z), axis=0))


def effective_rank(z: jax.Array) -> jax.Array:
  """Effective rank of the embedding covariance C = cov(z) (Roy & Vetterli 2007): exp(H(p)),
  p = singular values of C normalised to sum 1. 1 for embeddings on a line, d for isotropic ones."""
  s = jnp.linalg.svd(z - z.mean(0), compute_uv=False) ** 2  # ∝ singular values of C
  p = s / jnp.sum(s)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))
