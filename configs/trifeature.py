"""SimCLR (and MoCo-v2 with IFM) on Trifeature: shape × texture × colour, three independent
features of 10 values each (Hermann & Lampinen 2020; Robinson et al. 2021's test bed;
docs/method.md §2.7). Generated in memory, no download.

  python -m cl_jax.main --config=configs/trifeature.py --workdir=runs/trifeature
  python -m cl_jax.main --config=configs/trifeature.py:64 --workdir=...        (64 px)
  python -m cl_jax.main --config=configs/trifeature.py:collapse --workdir=...  (SCL/joint/UCL)
  python -m cl_jax.main --config=configs/trifeature.py --workdir=... \
      --config.loss.temperature=0.05 --config.loss.ifm_epsilon=0.1

eval.json reports the linear probe (and k-NN) accuracy of each feature — `shape`, `texture`,
`color` — on the encoder output h. The augmentations are SimCLR's CIFAR ones (crop, flip, colour
jitter 0.5, grayscale 0.2): colour jitter makes colour harder to rely on, crops cut texture and
shape, so the three features compete.
"""
from configs import common, ssl_methods


def get_config(arg=None):
  c = ssl_methods.get_config()      # SimCLR's recipe + every family's fields (MoCo's for IFM)
  c.loss.name = "ntxent"
  c.data.dataset = "trifeature"
  c.data.image_size = 32
  c.data.random_bits = 0
  c.data.crop_area_min = 0.2
  c.data.flip = True
  c.data.color_jitter = 0.5
  c.data.grayscale_prob = 0.2
  c.loss.temperature = 0.2
  c.train.num_epochs = 0
  c.train.num_steps = 500          # 12.8 epochs of the 10,000 training images at B = 256
  return common.with_variant(c, arg, {"64": size_64, "collapse": collapse}, "trifeature")


def size_64(c):
  """The 64-px variant (the same images drawn at twice the resolution)."""
  c.data.image_size = 64


def collapse(c):
  """Class collapse with a subclass independent of the class (Xue et al. 2023's data model, in
  pixels): the class `shape` supervises SCL / the joint loss (β = 0.5; `--config.loss.name=
  supcon` for SCL, `ntxent` for UCL); colour and texture are features independent of it. 5,000
  steps of batch 64 (the length the class-collapse theory needs, at a cost a CPU can pay), with
  probe curves of h (`curve`) and of z/‖z‖ (`curve_z`) every 250 steps."""
  c.loss.name = "joint"
  c.loss.beta = 0.5
  c.loss.supervised_label = "shape"
  c.train.batch_size = 64
  c.train.num_steps = 5000
  c.train.log_every_steps = 250
  c.train.checkpoint_every_steps = 500
  c.evals.curve.every_steps = 250
  c.evals.curve_z = dict(type="linear", features="embedding", l2=1e-3, probe_steps=200,
                         every_steps=250, at_end=False)
