"""MoCo-v2 with implicit feature modification (Robinson et al. 2021; docs/method.md §1.4, §1.7).

  python -m cl_jax.main --config=configs/moco_ifm.py --workdir=runs/moco_ifm      # ε = 0.1
  python -m cl_jax.main --config=configs/moco_ifm.py --workdir=runs/moco --config.loss.ifm_epsilon=0
  python -m cl_jax.main --config=configs/moco_ifm.py:imagenet100 --workdir=... \
      --config.data.data_dir=DIR

Query encoder + momentum (EMA) key encoder, a FIFO queue of K keys in the train state (saved with
checkpoints), InfoNCE with τ = 0.2 on [q·k⁺, q·queue], a 2-layer MLP head without BN, and
shuffle-BN: BatchNorm statistics over loss.bn_groups slices of the batch, the keys' taken after a
random permutation (MoCo's per-GPU BN with shuffled keys; global BN would let the batch statistics
reveal the positive key).
The embedded default uses the digits with random bits, so IFM's effect on suppression shows.

`:imagenet100` documents the paper's settings (ResNet-50, B = 512, SGD lr 0.8 (= 0.4·B/256,
linear scaling), momentum 0.9, wd 1e-4, cosine, 200 epochs, m = 0.99, K = 65536, τ = 0.2,
ε = 0.1) on ImageNet-100: a prepared tfds `imagenet2012` restricted to the 100 classes of CMC's
list (configs/imagenet100_classes.txt, via data.class_subset), relabelled 0..99.
"""
import os

from configs import common, simclr_randbit


def get_config(arg=None):
  c = simclr_randbit.get_config()
  c.model.head_batchnorm = False
  c.model.head_hidden_dim = 128
  c.loss.name = "moco"
  c.loss.temperature = 0.2
  c.loss.momentum = 0.99           # EMA of the key encoder
  c.loss.queue_size = 1024         # K keys; a multiple of train.batch_size
  c.loss.bn_groups = 0             # shuffle-BN groups; 0 = one per device, at least 2
  c.loss.ifm_epsilon = 0.1
  return common.with_variant(c, arg, {"imagenet100": imagenet100}, "moco_ifm")


def imagenet100(c):
  c.data.dataset = "imagenet2012"
  c.data.streaming = True        # ArrayRecord random access; JPEG crops decoded in one op
  c.data.class_subset = os.path.join(os.path.dirname(__file__), "imagenet100_classes.txt")
  c.data.image_size = 224
  c.data.random_bits = 0
  c.data.crop_area_min = 0.2
  c.data.flip = True
  c.data.color_jitter = 0.5      # MoCo-v2 "aug-plus": jitter (0.4, 0.4, 0.4, 0.1) p=0.8
  c.data.grayscale_prob = 0.2
  c.data.blur_prob = 0.5
  c.model.encoder = "resnet50"
  c.model.head_hidden_dim = 2048
  c.model.embed_dim = 128
  c.loss.queue_size = 65536
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.4
  c.optim.lr_scaling = "linear"
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 1e-4
  c.train.batch_size = 512
  c.train.num_epochs = 200
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 2500
