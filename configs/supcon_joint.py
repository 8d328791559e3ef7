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
import importlib.util
import os


def _sibling(name):
  """Import configs/<name>.py by path, so this file works from any working directory."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  if arg not in (None, "cifar100"):
    raise ValueError(f"Unknown variant {arg!r} of supcon_joint: use none or 'cifar100'.")
  c = _sibling("simclr_randbit").get_config("cifar10" if arg == "cifar100" else None)
  c.data.coarse_labels = True
  c.loss.name = "joint"
  c.loss.beta = 0.5                # β·SCL + (1−β)·UCL; 1 = SCL, 0 = UCL
  c.loss.supervised_label = "label"  # the coarse class supervises SCL
  c.eval.every_steps = 50
  if arg == "cifar100":  # CIFAR100-RandBit: 20 superclasses supervise, 100 classes = subclasses
    c.data.dataset = "cifar100"
    c.eval.every_steps = 5000
  return c
