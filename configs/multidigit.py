"""MultiDigits (Chen, Luo, Li 2021; docs/method.md §2.3): does SimCLR learn on images with several objects?

  python -m cl_jax.main --config=configs/multidigit.py --workdir=runs/md4
  python -m cl_jax.main --config=configs/multidigit.py --workdir=runs/md1 --config.data.num_digits=1
  python -m cl_jax.main --config=configs/multidigit.py:mnist --workdir=... --config.data.data_dir=DIR

Training canvases hold data.num_digits digits (placement 'random' or 'grid', never overlapping);
evaluation canvases hold data.eval_num_digits (1) digit, whose class is `label`.
Embedded default: 32 px canvases of the embedded 8×8 digits.
"""
from configs import common, simclr_randbit


def get_config(arg=None):
  c = simclr_randbit.get_config()
  c.data.image_size = 32
  c.data.random_bits = 0
  c.data.scene = "multidigits"
  c.data.digit_size = 8
  c.data.num_digits = 4
  c.data.eval_num_digits = 1
  c.data.placement = "random"      # 'random' | 'grid'
  c.data.crop_area_min = 0.3
  c.evals.kmeans = dict(type="kmeans", clusters=(2, 4, 8), num_fit=256, num_images=8,
                        every_steps=0, at_end=True)  # local_features_k<K>.png
  return common.with_variant(c, arg, {"mnist": mnist}, "multidigit")


def mnist(c):
  """112 px canvases, 4×4 grid of 28 px cells."""
  c.data.dataset = "mnist"
  c.data.image_size = 112
  c.data.digit_size = 28
  c.model.encoder = "resnet18_cifar"
  c.train.num_epochs = 100
