"""Digits of different sizes (Chen, Luo, Li 2021; docs/method.md §2.4): does a dominant object suppress a
smaller one?

  python -m cl_jax.main --config=configs/digit_sizes.py --workdir=runs/sizes16 \
      --config.data.other_digit_size=16

Two digits side by side: the indexed one at data.digit_size (its class: `label`), a random other
one at data.other_digit_size (its class: `other_digit`). The paper's finding: as the other digit
grows, the fixed-size digit's accuracy falls. Embedded default: 32 px canvas, 8 px fixed digit.
"""
from configs import common, simclr_randbit


def get_config(arg=None):
  c = simclr_randbit.get_config()
  c.data.image_size = 32
  c.data.random_bits = 0
  c.data.scene = "digit_sizes"
  c.data.digit_size = 8
  c.data.other_digit_size = 8      # the knob: 4 … 16 on the 32 px canvas
  c.data.crop_area_min = 0.5
  return common.with_variant(c, arg, {"mnist": mnist}, "digit_sizes")


def mnist(c):
  """Paper: one digit 20 px, the other 20 → 80 px."""
  c.data.dataset = "mnist"
  c.data.image_size = 160
  c.data.digit_size = 20
  c.data.other_digit_size = 80
  c.model.encoder = "resnet18_cifar"
  c.train.num_epochs = 100
