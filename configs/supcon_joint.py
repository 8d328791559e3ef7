"""Supervised (SCL), unsupervised (UCL = NT-Xent) and joint β·SCL + (1−β)·UCL contrastive learning
with coarse labels and random bits: class collapse vs feature suppression (Xue et al. 2023;
SPEC §1.2, §1.3, §2.6).

  python -m cl_jax.main --config=configs/supcon_joint.py --workdir=runs/joint      # β = 0.5
  python -m cl_jax.main --config=configs/supcon_joint.py --workdir=runs/scl --config.loss.name=supcon
  python -m cl_jax.main --config=configs/supcon_joint.py --workdir=runs/ucl --config.loss.name=ntxent
  python -m cl_jax.main --config=configs/supcon_joint.py:cifar100 --workdir=...   (tfds cifar100)

Embedded default: digits with class = (digit ≥ 5) supervising SCL and the digit as subclass, plus
random bits as the easy class-irrelevant feature. eval.json reports `label` (class), `subclass`
and `bits` accuracies and, every eval.every_steps, the probe curve (learn-then-unlearn).
"""
from cl_jax.config_files import sibling


def get_config(arg=None):
  if arg not in (None, "cifar100"):
    raise ValueError(f"Unknown variant {arg!r} of supcon_joint: use none or 'cifar100'.")
  c = sibling(__file__, "simclr_randbit").get_config("cifar10" if arg == "cifar100" else None)
  c.data.coarse_labels = True
  c.loss.name = "joint"
  c.loss.beta = 0.5                # β·SCL + (1−β)·UCL; 1 = SCL, 0 = UCL
  c.loss.supervised_label = "label"  # the coarse class supervises SCL
  c.eval.every_steps = 50
  if arg == "cifar100":  # CIFAR100-RandBit: 20 superclasses supervise, 100 classes = subclasses
    c.data.dataset = "cifar100"
    c.eval.every_steps = 5000
  return c
