"""Feature suppression by channel addition: digits on images (Chen, Luo, Li 2021; docs/method.md §2.2).

  python -m cl_jax.main --config=configs/digits_on_images.py --workdir=runs/doi_u16
  python -m cl_jax.main --config=configs/digits_on_images.py --workdir=runs/doi_u1 \
      --config.data.num_unique_digits=1
  python -m cl_jax.main --config=configs/digits_on_images.py:tf_flowers --workdir=... \
      --config.data.data_dir=DIR        (tfds tf_flowers backgrounds, tfds mnist digits)

Every read of a background gets one digit of a pool of U unique digits, replicated on a 3×3 grid
(pixel-wise max), each copy `data.digit_fraction` of the image side. eval.json: `label` (the background's class) and `digit` accuracies. The paper's
finding: with more unique digits, object accuracy falls while digit accuracy rises.
Embedded default: crops of scikit-learn's two sample photographs (label = which photograph) with
the embedded 8×8 digits, 32 px, the colab ConvNet.
"""
from configs import common, simclr_randbit


def get_config(arg=None):
  c = simclr_randbit.get_config()
  c.data.dataset = "photos"
  c.data.image_size = 32
  c.data.random_bits = 0
  c.data.scene = "digits_on_images"
  c.data.digit_dataset = "digits"
  c.data.num_unique_digits = 16    # U: the colab uses the first 16 MNIST training digits
  # Digit side / image side. The colab: 28-px digits on 224-px images = 1/8. The embedded 32-px
  # default uses 1/4 (8 px, the source digits' own resolution; 1/8 would be 4-px smudges).
  c.data.digit_fraction = 0.25
  c.data.crop_area_min = 0.2
  c.data.flip = True
  c.data.color_jitter = 0.5
  c.data.grayscale_prob = 0.2
  c.evals.kmeans = dict(type="kmeans", clusters=(2, 4, 8), num_fit=256, num_images=8,
                        every_steps=0, at_end=True)  # local_features_k<K>.png
  return common.with_variant(c, arg, {"tf_flowers": tf_flowers}, "digits_on_images")


def tf_flowers(c):
  c.data.dataset = "tf_flowers"
  c.data.digit_dataset = "mnist"
  c.data.image_size = 128
  c.data.digit_fraction = 1 / 8  # the colab's: 28-px digits on 224-px images
  c.data.crop_area_min = 0.08
  c.data.color_jitter = 1.0
  c.data.blur_prob = 0.5
  c.model.encoder = "resnet18"
  c.model.head_hidden_dim = 512
  c.model.embed_dim = 128
  c.train.batch_size = 256
  c.train.num_epochs = 200
