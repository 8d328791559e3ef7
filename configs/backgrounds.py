"""Digits on distinct backgrounds (Xue et al. 2023; docs/method.md §2.5): with a background shared by both
views, the easy background feature suppresses the digit; augmentation that replaces the background
per view removes the shortcut.

  python -m cl_jax.main --config=configs/backgrounds.py --workdir=runs/bg_shared
  python -m cl_jax.main --config=configs/backgrounds.py --workdir=runs/bg_replaced \
      --config.data.shared_background=False

Each digit gets a background fixed per image (one of data.num_backgrounds crops of scikit-learn's
sample photographs; label `background`), or — shared_background=False — every view draws its
own. eval.json: `label` (digit) and, when shared, `background`.
"""
from configs import common, simclr_randbit


def get_config(arg=None):
  c = simclr_randbit.get_config()
  c.data.image_size = 32
  c.data.random_bits = 0
  c.data.scene = "backgrounds"
  c.data.digit_size = 16
  c.data.num_backgrounds = 64
  c.data.shared_background = True  # the knob: False replaces the background in every view
  c.data.crop_area_min = 0.5
  return common.with_variant(c, arg, {"mnist": mnist}, "backgrounds")


def mnist(c):
  c.data.dataset = "mnist"
  c.data.image_size = 64
  c.data.digit_size = 28
  c.data.num_backgrounds = 1000
  c.train.num_epochs = 100
