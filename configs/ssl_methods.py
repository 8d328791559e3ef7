"""BYOL, SimSiam, Barlow Twins and VICReg (docs/method.md §1.9), with the random-bit channels of
configs/simclr_randbit.py, so feature suppression can be asked of every method family.

  python -m cl_jax.main --config=configs/ssl_methods.py --workdir=runs/byol          # BYOL
  python -m cl_jax.main --config=configs/ssl_methods.py --workdir=runs/vicreg \
      --config.loss.name=vicreg                      # or simsiam, barlow_twins, ntxent, moco
  python -m cl_jax.main --config=configs/ssl_methods.py:cifar10 --config.loss.name=barlow_twins \
      --workdir=...                                  # each paper's CIFAR-10 recipe

Every method's fields are set at once (each reads its own; `objectives.FIELDS`), so
`--config.loss.name` switches the method with its defaults — SimCLR's (`ntxent`) and MoCo-v2's
(`moco`, without IFM; configs/moco_ifm.py has its MLP head) included, for the families table
(configs/sweeps/ssl_families_randbit.json):
- byol: online encoder + projector + predictor, target = EMA of the online network, its decay
  from loss.momentum to 1 on a cosine schedule over the run;
- simsiam: the same predictor, a stop-gradient instead of a target network;
- barlow_twins: the cross-correlation of the batch-standardised embeddings pulled to the identity,
  off-diagonal weight loss.lambd;
- vicreg: invariance + variance hinge + covariance, weights loss.sim_coeff / std_coeff / cov_coeff.
The embedded default keeps SimCLR's small ConvNet, head and Adam recipe (so the families differ
in their objective only), with a predictor as wide as the head's hidden layer.

`:cifar10` is a CIFAR-10 ResNet-18 recipe (the SimCLR variant's data and augmentations, LARS,
B = 256, 1000 epochs, warm-up 10) with a wide projector — Barlow Twins and VICReg want one (their
papers: 8192-8192-8192 on ImageNet; 2048-2048-2048 is the usual CIFAR choice) — and each paper's
loss defaults: BYOL τ_base 0.99 (0.996 on ImageNet), predictor 4096 wide (SimSiam's paper: 512,
--config.model.predictor_hidden_dim=512), Barlow Twins λ = 5e-3, VICReg 25 / 25 / 1.
"""
from configs import common, simclr_randbit


def get_config(arg=None):
  c = simclr_randbit.get_config()
  c.loss.name = "byol"             # byol | simsiam | barlow_twins | vicreg (| ntxent | moco ...)
  c.model.predictor_hidden_dim = 128  # BYOL / SimSiam: predictor Dense(this)→BN→ReLU→Dense(d)
  c.loss.momentum = 0.99           # BYOL: target EMA decay at the start (→ 1, cosine); MoCo: m
  c.loss.queue_size = 1024         # MoCo: keys in the queue (configs/moco_ifm.py)
  c.loss.bn_groups = 0             # MoCo: shuffle-BN groups, 0 = one per device (at least 2)
  c.loss.lambd = 5e-3              # Barlow Twins: weight of the off-diagonal correlations
  c.loss.sim_coeff = 25.0          # VICReg: invariance (MSE) weight
  c.loss.std_coeff = 25.0          # VICReg: variance-hinge weight
  c.loss.cov_coeff = 1.0           # VICReg: covariance weight
  return common.with_variant(c, arg, {"cifar10": cifar10}, "ssl_methods")


def cifar10(c):
  simclr_randbit.cifar10(c)
  c.model.head_layers = 3
  c.model.head_hidden_dim = 2048
  c.model.embed_dim = 2048
  c.model.head_output_batchnorm = False
  c.model.predictor_hidden_dim = 4096
  c.loss.momentum = 0.99
  c.optim.learning_rate = 0.3
  c.train.batch_size = 256
