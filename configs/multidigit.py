"""MultiDigits (Chen, Luo, Li 2021; SPEC §2.3): does SimCLR learn on images with several objects?

  python -m cl_jax.main --config=configs/multidigit.py --workdir=runs/md4
  python -m cl_jax.main --config=configs/multidigit.py --workdir=runs/md1 --config.data.num_digits=1
  python -m cl_jax.main --config=configs/multidigit.py:mnist --workdir=... --config.data.data_dir=DIR

Training canvases hold data.num_digits digits (placement 'random' or 'grid', never overlapping);
evaluation canvases hold data.eval_num_digits (1) digit, whose class is `label`.
Embedded default: 32 px canvases of the embedded 8×8 digits.
"""
from cl_jax.config_files import sibling


def get_config(arg=None):
  if arg not in (None, "mnist"):
    raise ValueError(f"Unknown variant {arg!r} of multidigit: use none or 'mnist'.")
  c = sibling(__file__, "simclr_randbit").get_config()
  c.data.image_size = 32
  c.data.random_bits = 0
  c.data.scene = "multidigits"
  c.data.digit_size = 8
  c.data.num_digits = 4
  c.data.eval_num_digits = 1
  c.data.placement = "random"      # 'random' | 'grid'
  c.data.crop_area_min = 0.3
  c.eval.kmeans_clusters = (2, 4, 8)
  if arg == "mnist":  # 112 px canvases, 4×4 grid of 28 px cells
    c.data.dataset = "mnist"
    c.data.image_size = 112
    c.data.digit_size = 28
    c.model.encoder = "resnet18_cifar"
    c.train.num_epochs = 100
  return c
