"""Generalized contrastive losses (Chen, Luo, Li 2021; docs/method.md §1.5): L = scale·(L_align + λ·L_dist)
with L_dist = logsumexp (uniform-hypersphere prior, decoupled NT-Xent) or the sliced-Wasserstein
distance to a gaussian / uniform_hypercube / uniform_hypersphere prior.

  python -m cl_jax.main --config=configs/generalized_losses.py --workdir=runs/gen_gauss \
      --config.loss.prior=gaussian --config.loss.hidden_norm=False --config.loss.lam=1.0
  python -m cl_jax.main --config=configs/generalized_losses.py:cifar10 --workdir=...

Per-prior settings used in our experiments (the paper's per-variant λ/τ are not published):
  logsumexp            hidden_norm=True,  τ=0.2, λ=τ/d, scale=d  (≡ τ·NT-Xent up to constants)
  uniform_hypersphere  hidden_norm=True,  λ=1, scale=d
  gaussian             hidden_norm=False, λ=1, scale=1
  uniform_hypercube    hidden_norm=False, λ=1, scale=1
(d = model.embed_dim; with normalised h the alignment term is O(1/d), hence scale=d.)
`--config.loss.name=ntxent` trains plain NT-Xent from the same config for comparison;
`--config.model.head_layers=2|3` gives the paper's 2- and 3-layer heads.
"""
from configs import simclr_randbit


def get_config(arg=None):
  c = simclr_randbit.get_config(arg)  # its variants (e.g. :cifar10) apply here too
  c.model.head_layers = 3
  c.loss.name = "generalized"
  c.loss.prior = "logsumexp"
  c.loss.hidden_norm = True
  c.loss.temperature = 0.2
  c.loss.lam = c.loss.temperature / c.model.embed_dim
  c.loss.scale = float(c.model.embed_dim)
  if arg is None:
    c.data.random_bits = 0
  return c
