"""SimCLR with random-bit channels shared between views (Chen, Luo, Li 2021; docs/method.md §2.1, §3).

  python -m cl_jax.main --config=configs/simclr_randbit.py --workdir=runs/randbit
  python -m cl_jax.main --config=configs/simclr_randbit.py:mnist --workdir=...   (tfds mnist)
  python -m cl_jax.main --config=configs/simclr_randbit.py:cifar10 --workdir=... (tfds cifar10)
  python -m cl_jax.main --config=configs/simclr_randbit.py:mnist_colab --workdir=... \
      [--config.data.dataset=mnist_idx --config.data.data_dir=DIR_WITH_MNIST_IDX_FILES]

`:mnist_colab` reproduces the randbits_mnist colab (valid-padding ConvNet, Dense 256–BN–ReLU →
Dense 64 head, Keras BatchNorm, L2 1e-4 on kernels, views through the model one at a time, loss on
the N×N cross-view logits); its table reports eval.json's `online_probe` (the colab's metric).
The other config files extend this one.

No argument: the embedded default — scikit-learn's 1,797 8×8 digits upsampled to 16 px, the colab
ConvNet, a few minutes on a laptop CPU.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "digits"        # 'digits' (embedded), 'folder', 'npz', 'mnist_idx' or tfds
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data_dir, folder, .npz
  c.data.image_size = 16
  c.data.channels = 0              # 0: as the data (1 grey, 3 colour); 1 or 3: convert to that
  c.data.random_bits = 5           # k constant bit planes appended after augmentation
  c.data.scene = "none"            # composed images: see configs/digits_on_images.py, ...
  c.data.coarse_labels = False     # label = class (digit >= 5 / cifar100 coarse), subclass = fine
  c.data.class_subset = ml_collections.config_dict.placeholder(str)  # file of class names to keep
  c.data.streaming = False         # True: read a tfds split by index (ArrayRecord), not in memory
  c.data.crop_area_min = 0.5       # random resized crop, area in (crop_area_min, 1)
  c.data.flip = False
  c.data.color_jitter = 0.0        # strength s (RGB only)
  c.data.grayscale_prob = 0.0      # RGB only
  c.data.blur_prob = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.encoder = "convnet"
  c.model.head_layers = 2
  c.model.head_hidden_dim = 128
  c.model.embed_dim = 64           # the embedding size (head output)
  c.model.head_batchnorm = True    # SimCLR head (BN); False: MoCo-v2 MLP head (biases, no BN)
  c.model.head_output_batchnorm = True  # False: last head layer a plain Dense (randbits colab)
  c.model.conv_padding = "SAME"    # convnet: SAME (flatten 4·4·64 at 28 px) | VALID (colab, 2·2·64)
  c.model.bn_momentum = 0.9        # every BatchNorm; Keras (the colab): 0.99
  c.model.bn_epsilon = 1e-5        # Keras: 1e-3
  c.model.dtype = "float32"        # bfloat16: bf16 activations; params, BN stats, losses float32

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "ntxent"
  c.loss.temperature = 0.2
  c.loss.ifm_epsilon = 0.0         # implicit feature modification (Robinson et al.); 0 = off
  c.loss.ifm_alpha = 1.0           # L_IFM = (L + α·L_ε) / (1 + α)
  c.loss.kernel_l2 = 0.0           # + kernel_l2·Σ‖W‖² over encoder/head kernels (Keras l2 reg.)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.optim.lr_scaling = "none"      # none | linear (×B/256) | sqrt (×√B)
  c.optim.schedule = "linear"      # cosine | linear | constant, after warm-up
  c.optim.warmup_epochs = 0.0
  c.optim.weight_decay = 0.0
  c.optim.momentum = 0.9           # sgd / lars momentum; adam's β1

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 256         # GLOBAL batch
  c.train.num_epochs = 100
  c.train.num_steps = -1           # > 0 overrides num_epochs
  c.train.concat_views = True      # both views as one batch (BN over 2B); False: one at a time
                                   # (two-view losses; MoCo's views are separate passes anyway)
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 200

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 512          # images per batch when the evaluators extract features

  # What is measured (cl_jax/evaluators): NAME = dict(type, every_steps (0: not during
  # training), at_end (default True), the type's fields). eval.json holds one entry per NAME.
  c.evals = ml_collections.ConfigDict()
  at_end = dict(every_steps=0, at_end=True)
  c.evals.linear_eval = dict(type="linear", features="encoder", l2=1e-3, probe_steps=200,
                            **at_end)  # L-BFGS probe on the encoder output h
  c.evals.online_probe = dict(type="online", **at_end)  # the probe trained with the encoder
  c.evals.knn = dict(type="knn", k=200, temperature=0.07, **at_end)  # weighted k-NN, cosine
  c.evals.metrics = dict(type="metrics", **at_end)      # alignment, uniformity, effective rank
  c.evals.embeddings = dict(type="embeddings", **at_end)  # embeddings.png
  # Linear probes during training (learn, then unlearn): --config.evals.curve.every_steps=50.
  c.evals.curve = dict(type="linear", features="encoder", l2=1e-3, probe_steps=200,
                       every_steps=0, at_end=False)
  return common.with_variant(c, arg, VARIANTS, "simclr_randbit")


def mnist(c):
  """The randbits_mnist colab: tfds mnist, batch 1000, 10 epochs, Adam 1e-3 linear decay."""
  c.data.dataset = "mnist"
  c.data.image_size = 28
  c.train.batch_size = 1000
  c.train.num_epochs = 10
  c.train.log_every_steps = 20
  c.train.checkpoint_every_steps = 300


def mnist_colab(c):
  """Fidelity variant: the randbits_mnist colab's model, loss and metric."""
  mnist(c)
  c.model.conv_padding = "VALID"        # flatten 2·2·64 = 256
  c.model.head_hidden_dim = 256         # head: Dense 256–BN–ReLU → Dense 64, no output BN
  c.model.head_output_batchnorm = False
  c.model.bn_momentum = 0.99            # Keras BatchNorm defaults
  c.model.bn_epsilon = 1e-3
  c.loss.name = "ntxent_cross_view"     # the N×N cross-view logits only
  c.loss.kernel_l2 = 1e-4               # Keras l2(1e-4) on every conv/dense kernel
  c.train.concat_views = False          # each view through the model on its own


def cifar10(c):
  """SimCLR CIFAR-10 recipe: ResNet-18 (CIFAR stem), B=512, LARS lr 1.0×B/256, τ=0.5."""
  c.data.dataset = "cifar10"
  c.data.image_size = 32
  c.data.crop_area_min = 0.08
  c.data.flip = True
  c.data.color_jitter = 0.5
  c.data.grayscale_prob = 0.2
  c.model.encoder = "resnet18_cifar"
  c.model.head_hidden_dim = 512
  c.model.embed_dim = 128
  c.loss.temperature = 0.5
  c.optim.name = "lars"
  c.optim.learning_rate = 1.0
  c.optim.lr_scaling = "linear"
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 10
  c.optim.weight_decay = 1e-4
  c.train.batch_size = 512
  c.train.num_epochs = 1000
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 2000


VARIANTS = {"mnist": mnist, "mnist_colab": mnist_colab, "cifar10": cifar10}
