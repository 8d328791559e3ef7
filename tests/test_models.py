"""Encoders and heads: shapes, SimCLR conventions, optimizer masks and schedules."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import flax

from cl_jax import models, optim
from tests import float_order


def _model(encoder, head_layers=2, embed_dim=8):
  return models.create_model(ml_collections.ConfigDict(dict(
      encoder=encoder, head_layers=head_layers, head_hidden_dim=16, embed_dim=embed_dim,
      head_batchnorm=True, head_output_batchnorm=True, conv_padding="SAME", bn_momentum=0.9,
      bn_epsilon=1e-5, dtype="float32")),
      {"label": 10})


def test_mnist_colab_variant_has_the_colabs_layers():
  """The randbits_mnist colab: valid padding (28 → 13 → 6 → 2, flatten 2·2·64 = 256), Dense 128
  representation, head Dense 256–BN–ReLU → Dense 64 with a bias and no BN, Keras BatchNorm."""
  from configs import simclr_randbit  # pylint: disable=g-import-not-at-top
  config = simclr_randbit.get_config("mnist_colab")
  model = models.create_model(config.model, {"label": 10})
  x = jnp.zeros((2, 28, 28, 1 + config.data.random_bits))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  shapes = {k: v.shape for k, v in params.items()}
  assert shapes["encoder/Dense_0/kernel"] == (256, 128)
  assert shapes["head/Dense_0/kernel"] == (128, 256) and "head/Dense_0/bias" not in shapes
  assert shapes["head/Dense_1/kernel"] == (256, 64) and shapes["head/Dense_1/bias"] == (64,)
  assert sorted(k for k in shapes if k.startswith("head/BatchNorm")) == [
      "head/BatchNorm_0/bias", "head/BatchNorm_0/scale"]  # hidden layer only: no output BN
  assert model.encoder.padding == "VALID"
  assert (model.encoder.bn_momentum, model.encoder.bn_epsilon) == (0.99, 1e-3)
  assert (model.head.bn_momentum, model.head.bn_epsilon) == (0.99, 1e-3)
  # The cl_jax default keeps SAME padding: flatten 4·4·64 = 1024 at 28 px.
  default = models.create_model(simclr_randbit.get_config("mnist").model, {"label": 10})
  variables = jax.eval_shape(lambda: default.init(jax.random.PRNGKey(0), x, train=False))
  assert variables["params"]["encoder"]["Dense_0"]["kernel"].shape == (1024, 128)


def test_kernel_l2_penalty_sums_the_encoder_and_head_kernels_only():
  model = _model("convnet")
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 4)), train=False)
  flat = flax.traverse_util.flatten_dict(variables["params"])
  expected = sum(float(jnp.sum(v ** 2)) for k, v in flat.items()
                 if k[-1] == "kernel" and not k[0].startswith("probe_"))
  assert expected > 0
  np.testing.assert_allclose(optim.kernel_l2_penalty(variables["params"]), expected, rtol=1e-5)


@pytest.mark.parametrize("encoder,size,h_dim", [
    ("convnet", 16, 128), ("resnet18_cifar", 32, 512), ("resnet18", 64, 512),
    ("resnet50_cifar", 32, 2048), ("resnet50", 64, 2048)])
def test_encoder_output_shapes(encoder, size, h_dim):
  model = _model(encoder)
  x = jnp.zeros((2, size, size, 4))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  h, z, logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert h.shape == (2, h_dim) and z.shape == (2, 8) and logits["label"].shape == (2, 10)


def test_resnet18_forward_and_zero_init_of_last_block_bn():
  model = _model("resnet18_cifar")
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  assert sum(v.size for v in params.values()) > 11e6  # ResNet-18 has ~11.2M parameters
  # Second BN of every BasicBlock starts with γ = 0, so each block starts as the identity.
  block_bn1 = [k for k in params if "BasicBlock" in k and k.endswith("BatchNorm_1/scale")]
  assert len(block_bn1) == 8 and all(np.all(params[k] == 0) for k in block_bn1)
  h, _, _ = model.apply(variables, x, train=False)
  assert np.all(np.isfinite(h)) and h.shape == (2, 512)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_projection_head_depth(layers):
  model = _model("convnet", head_layers=layers)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 1)),
                                                train=False))
  head = variables["params"]["head"]
  assert sorted(k for k in head if k.startswith("Dense")) == [f"Dense_{i}" for i in range(layers)]
  assert "bias" not in head[f"BatchNorm_{layers - 1}"]  # last BN: no centring


def test_decay_mask_excludes_batchnorm_biases_and_probe():
  model = _model("convnet")
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 1)), train=False)["params"]
  mask = flax.traverse_util.flatten_dict(optim.decay_mask(params), sep="/")
  assert mask["encoder/Conv_0/kernel"] and mask["head/Dense_0/kernel"]
  assert not mask["encoder/BatchNorm_0/scale"] and not mask["encoder/BatchNorm_0/bias"]
  assert not mask["probe_label/kernel"] and not mask["probe_label/bias"]


def test_schedule_warmup_cosine_and_lr_scaling():
  cfg = ml_collections.ConfigDict(dict(learning_rate=1.0, lr_scaling="linear",
                                       schedule="cosine", warmup_epochs=1.0))
  schedule = optim.learning_rate_schedule(cfg, batch_size=512, num_steps=100, steps_per_epoch=10)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(100)],
                             [0.0, 1.0, 2.0, 0.0], atol=1e-6)  # peak 1.0 × 512/256
  np.testing.assert_allclose(schedule(55), 1.0, atol=1e-6)  # cosine half-way
  cfg.update(dict(lr_scaling="sqrt", schedule="linear", warmup_epochs=0.0))
  schedule = optim.learning_rate_schedule(cfg, batch_size=64, num_steps=100, steps_per_epoch=10)
  np.testing.assert_allclose([schedule(0), schedule(50)], [8.0, 4.0], atol=1e-6)


def test_lars_skips_trust_ratio_and_decay_on_masked_params():
  cfg = ml_collections.ConfigDict(dict(name="lars", weight_decay=0.1, momentum=0.0))
  tx = optim.create_optimizer(cfg, lambda _: 1.0)
  params = {"encoder": {"Conv_0": {"kernel": jnp.full((2,), 10.0)},
                        "BatchNorm_0": {"scale": jnp.full((2,), 10.0)}}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Masked (BN) leaf: plain SGD step −lr·g. Kernel: trust-ratio-scaled step with weight decay.
  np.testing.assert_allclose(updates["encoder"]["BatchNorm_0"]["scale"], -1.0)
  decayed = 1.0 + 0.1 * 10.0                    # g + wd·p per element
  trust = 1e-3 * 10.0 / decayed                 # η·‖p‖/‖g + wd·p‖ (same √2 factors cancel)
  np.testing.assert_allclose(updates["encoder"]["Conv_0"]["kernel"], -trust * decayed, rtol=1e-5)


def test_bfloat16_step_is_close_to_float32_and_learns():
  """model.dtype=bfloat16: parameters, BatchNorm statistics, h, z and the loss stay float32; the
  loss at the same parameters is within 0.2% of float32 (measured 1e-4: bf16 keeps 8
  significant bits, ≈0.4% error per activation, averaged over the batch by the loss), the
  gradients point the same way (cosine > 0.98; measured 0.990: per-entry bf16 noise), and 20 Adam
  steps lower the loss as float32's do."""
  from cl_jax import objectives, train  # pylint: disable=g-import-not-at-top
  from configs import simclr_randbit  # pylint: disable=g-import-not-at-top
  config = simclr_randbit.get_config()
  rng = np.random.default_rng(0)
  batch = {"view1": jnp.asarray(rng.uniform(size=(32, 16, 16, 3)), jnp.float32),
           "view2": jnp.asarray(rng.uniform(size=(32, 16, 16, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 32))}
  models_by_dtype, losses_by_dtype, grads = {}, {}, {}
  for dtype in ("float32", "bfloat16"):
    config.model.dtype = dtype
    models_by_dtype[dtype] = models.create_model(config.model, {"label": 10})
  variables = models_by_dtype["float32"].init(jax.random.PRNGKey(0), batch["view1"], train=False)
  for dtype, model in models_by_dtype.items():
    loss_and_grad = jax.jit(functools.partial(
        jax.value_and_grad(train.compute_loss, has_aux=True), model=model,
        objective=objectives.create(config, 1), loss_config=config.loss))
    (total, (metrics, stats, _)), g = loss_and_grad(variables["params"],
                                                    variables["batch_stats"], None, batch, None)
    assert total.dtype == jnp.float32 and metrics["loss"].dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((g, stats)))
    losses_by_dtype[dtype], grads[dtype] = float(metrics["loss"]), g
  np.testing.assert_allclose(losses_by_dtype["bfloat16"], losses_by_dtype["float32"], rtol=2e-3)
  flat = {d: jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)]) for d, g in grads.items()}
  cosine = flat["float32"] @ flat["bfloat16"] / (
      jnp.linalg.norm(flat["float32"]) * jnp.linalg.norm(flat["bfloat16"]))
  assert cosine > 0.98, cosine
  h, z, _ = models_by_dtype["bfloat16"].apply(variables, batch["view1"], train=False)
  assert h.dtype == z.dtype == jnp.float32

  tx = optim.create_optimizer(config.optim, lambda _: 1e-3)
  trajectory = {}
  for dtype, model in models_by_dtype.items():
    state = train.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                    batch_stats=variables["batch_stats"], tx=tx)
    step = jax.jit(lambda s, b, model=model: train.train_step(
        s, b, train.traced_hyperparameters(config), model=model,
        objective=objectives.create(config, 1), loss_config=config.loss,
        schedule=lambda _: 1e-3))
    values = []
    for _ in range(20):
      state, metrics = step(state, batch)
      values.append(float(metrics["loss"]))
    assert jax.tree.leaves(state.params)[0].dtype == jnp.float32
    trajectory[dtype] = values
  assert trajectory["bfloat16"][-1] < 0.7 * trajectory["bfloat16"][0]
  np.testing.assert_allclose(trajectory["bfloat16"][-1], trajectory["float32"][-1], rtol=0.1)


@pytest.mark.parametrize("padding,stride,size", [("SAME", 2, 9), ("VALID", 2, 28), ("SAME", 1, 6),
                                                 ("VALID", 1, 7), (((1, 0), (2, 1)), 2, 8)])
def test_im2col_conv_equals_xla_convolution_with_gradients(padding, stride, size):
  """The CPU convolution (strided slices + one matmul) against lax.conv_general_dilated."""
  from cl_jax.models import convnet  # pylint: disable=g-import-not-at-top
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, (3, size, size, 5))
  w = jax.random.normal(kw, (3, 3, 5, 4))
  dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  precision = jax.lax.Precision.HIGHEST

  def loss(conv, x, w):
    y = conv(x, w, (stride, stride), padding, dimension_numbers=dims, precision=precision)
    return jnp.sum(jnp.sin(y)), y

  (_, want), want_grads = jax.value_and_grad(
      lambda x, w: loss(jax.lax.conv_general_dilated, x, w), (0, 1), has_aux=True)(x, w)
  (_, got), got_grads = jax.value_and_grad(
      lambda x, w: loss(convnet.im2col_conv, x, w), (0, 1), has_aux=True)(x, w)
  assert got.shape == want.shape
  float_order.assert_close(got, want)  # the same products summed in another order
  float_order.assert_close(got_grads, want_grads)


def test_convnet_on_cpu_uses_im2col_with_the_same_parameters_and_outputs():
  from cl_jax.models import convnet  # pylint: disable=g-import-not-at-top
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3))
  native = convnet.ConvNet(widths=(8, 16), hidden_dim=12, conv_fn=jax.lax.conv_general_dilated)
  default = convnet.ConvNet(widths=(8, 16), hidden_dim=12)
  variables = native.init(jax.random.PRNGKey(0), x, train=False)
  assert jax.tree.structure(variables) == jax.tree.structure(
      default.init(jax.random.PRNGKey(0), x, train=False))
  float_order.assert_close(default.apply(variables, x, train=False),
                           native.apply(variables, x, train=False))
