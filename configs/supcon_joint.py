"""Supervised (SCL), unsupervised (UCL = NT-Xent) and joint β·SCL + (1−β)·UCL contrastive learning
with coarse labels and random bits: class collapse vs feature suppression (Xue et al. 2023;
docs/method.md §1.2, §1.3, §2.6).

  python -m cl_jax.main --config=configs/supcon_joint.py --workdir=runs/joint      # β = 0.5
  python -m cl_jax.main --config=configs/supcon_joint.py --workdir=runs/scl --config.loss.name=supcon
  python -m cl_jax.main --config=configs/supcon_joint.py --workdir=runs/ucl --config.loss.name=ntxent
  python -m cl_jax.main --config=configs/supcon_joint.py:cifar100 --workdir=...   (tfds cifar100)

Embedded default: digits with class = (digit ≥ 5) supervising SCL and the digit as subclass, plus
random bits as the easy class-irrelevant feature. eval.json reports `label` (class), `subclass`
and `bits` accuracies of the encoder output h (`linear_eval`) and of the normalised embedding z
(`linear_eval_z`) and, every evals.curve.every_steps, the probe curve of h (learn-then-unlearn).
"""
from configs import common, simclr_randbit


def get_config(arg=None):
  c = simclr_randbit.get_config()
  c.data.coarse_labels = True
  c.loss.name = "joint"
  c.loss.beta = 0.5                # β·SCL + (1−β)·UCL; 1 = SCL, 0 = UCL
  c.loss.supervised_label = "label"  # the coarse class supervises SCL
  c.evals.curve.every_steps = 50   # linear probes during training
  # Class collapse is a property of the embedding the loss sees: probe z/‖z‖ too.
  c.evals.linear_eval_z = dict(type="linear", features="embedding", l2=1e-3, probe_steps=200,
                               every_steps=0, at_end=True)
  return common.with_variant(c, arg, {"cifar100": cifar100}, "supcon_joint")


def cifar100(c):
  """CIFAR100-RandBit: the CIFAR-10 recipe on cifar100; 20 superclasses supervise, the 100
  classes are the subclasses."""
  simclr_randbit.cifar10(c)
  c.data.dataset = "cifar100"
  c.evals.curve.every_steps = 5000
