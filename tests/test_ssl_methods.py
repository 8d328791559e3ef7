"""BYOL, SimSiam, Barlow Twins and VICReg: losses against NumPy references of the official code,
BYOL's target schedule, 1 device = 8 devices, each method end to end, the collapse warning."""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from cl_jax import losses, models, objectives, optim, train, validate
from cl_jax.data import pipeline, sources
from configs import ssl_methods
from tests import float_order

ONE_DEVICE = jax.devices()[:1]
METHODS = ("byol", "simsiam", "barlow_twins", "vicreg")


# ---- NumPy references, float64, line by line after the official PyTorch code.

def np_negative_cosine(p, z):
  p = p / np.linalg.norm(p, axis=1, keepdims=True)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  return -(p * z).sum(axis=1).mean()


def np_barlow_twins(z1, z2, lambd):
  """c = bn(z1).T @ bn(z2) / N; on_diag = Σ(c_ii − 1)²; off_diag = Σ_{i≠j} c_ij²."""
  def bn(z):  # nn.BatchNorm1d(affine=False) in training mode: biased variance, eps 1e-5
    return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
  c = bn(z1).T @ bn(z2) / len(z1)
  on_diag = sum((c[i, i] - 1) ** 2 for i in range(len(c)))
  off_diag = sum(c[i, j] ** 2 for i in range(len(c)) for j in range(len(c)) if i != j)
  return on_diag + lambd * off_diag


def np_vicreg(x, y, sim_coeff, std_coeff, cov_coeff):
  n, d = x.shape
  repr_loss = ((x - y) ** 2).mean()                        # F.mse_loss
  x, y = x - x.mean(0), y - y.mean(0)
  std_x = np.sqrt(x.var(0, ddof=1) + 0.0001)                # torch .var: unbiased
  std_y = np.sqrt(y.var(0, ddof=1) + 0.0001)
  std_loss = np.maximum(1 - std_x, 0).mean() / 2 + np.maximum(1 - std_y, 0).mean() / 2
  cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)
  off = ~np.eye(d, dtype=bool)
  cov_loss = (cov_x[off] ** 2).sum() / d + (cov_y[off] ** 2).sum() / d
  return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def directional_derivatives(f64, args, directions, h=1e-6):
  """Central differences of the float64 reference f64 along `directions` (one per row)."""
  return np.array([(f64(*[a + h * u for a, u in zip(args, us)]) -
                    f64(*[a - h * u for a, u in zip(args, us)])) / (2 * h) for us in directions])


CASES = {
    "negative_cosine": (losses.negative_cosine, np_negative_cosine, {}),
    "barlow_twins": (losses.barlow_twins, np_barlow_twins, {"lambd": 5e-3}),
    "barlow_twins_lambda_1": (losses.barlow_twins, np_barlow_twins, {"lambd": 1.0}),
    "vicreg": (losses.vicreg, np_vicreg, {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0}),
    "vicreg_weights": (losses.vicreg, np_vicreg, {"sim_coeff": 1.0, "std_coeff": 3.0,
                                                  "cov_coeff": 7.0}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("n,d,scale", [(16, 8, 1.0), (24, 5, 0.3)])  # scale 0.3: std hinge active
def test_loss_matches_the_official_formula_in_value_and_gradient(case, n, d, scale):
  loss, reference, kwargs = CASES[case]
  rng = np.random.default_rng(n * d)
  z1 = scale * rng.normal(size=(n, d))
  z2 = z1 + 0.5 * scale * rng.normal(size=(n, d))  # correlated views, as after training
  f32 = lambda a, b: loss(a, b, **kwargs)
  f64 = lambda a, b: reference(a, b, **kwargs)
  value = f32(jnp.float32(z1), jnp.float32(z2))
  np.testing.assert_allclose(value, f64(z1, z2), rtol=1e-5)
  # The gradient along random directions against the reference's central differences (float64:
  # its error ~h² ≈ 1e-12 is far below float32's).
  directions = rng.normal(size=(6, 2, n, d))
  g1, g2 = jax.grad(f32, argnums=(0, 1))(jnp.float32(z1), jnp.float32(z2))
  ours = np.einsum("kij,ij->k", directions[:, 0], g1) + np.einsum("kij,ij->k", directions[:, 1], g2)
  float_order.assert_close(ours, directional_derivatives(f64, (z1, z2), directions))


def test_vicreg_and_barlow_twins_are_minimal_where_the_papers_say():
  rng = np.random.default_rng(0)
  white = rng.normal(size=(4096, 4))
  white = (white - white.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(white.T, bias=True))).T
  # Identical whitened views: c = identity → Barlow Twins 0 (up to BN's eps); VICReg: no
  # invariance term, std ≥ 1, decorrelated → 0 up to the sample's covariance.
  assert float(losses.barlow_twins(white, white, 5e-3)) < 1e-3
  assert float(losses.vicreg(white, white)) < 1e-3
  collapsed = np.ones((64, 4)) + 1e-3 * rng.normal(size=(64, 4))
  assert float(losses.vicreg(collapsed, collapsed)) > 20  # the variance hinge: 25·(1 − 0.001)


def test_byol_target_momentum_goes_from_base_to_one_on_a_cosine():
  tau = lambda k: float(objectives.byol_momentum(0.99, k, 100))
  assert tau(0) == pytest.approx(0.99) and tau(100) == pytest.approx(1.0)
  assert tau(50) == pytest.approx(0.995)
  assert all(tau(k) < tau(k + 1) for k in range(100))


def _model_and_batch(config, mesh, num_steps=2):
  split = sources.load(config.data, "train")
  model = models.create_model(config.model, split.num_classes,
                              predictor=config.loss.name in objectives.WITH_PREDICTOR)
  batches = pipeline.TrainBatches(split, config.data, seeds=[0], batch_size=32, start_step=0,
                                  num_steps=num_steps, mesh=mesh)
  return model, batches


def test_byol_target_is_the_ema_of_the_online_network_on_the_schedule(small):
  config = small(ssl_methods.get_config())
  config.loss.momentum = 0.9
  mesh = train.create_mesh(ONE_DEVICE)
  model, batches = _model_and_batch(config, mesh, num_steps=3)
  objective = objectives.create(config, 1, num_steps=4)
  tx = optim.create_optimizer(config.optim, lambda _: 1e-2)
  state = train.create_train_state(model, tx, (1, 16, 16, 6), 0, mesh, objective)
  assert "predictor" in state.params
  step = jax.jit(lambda s, b: train.train_step(s, b, train.traced_hyperparameters(config),
                                               model=model, objective=objective,
                                               loss_config=config.loss, schedule=lambda _: 1e-2))
  target = jax.device_get(state.objective_state["params"])
  for k, batch in enumerate(batches):
    online = jax.device_get(state.params)  # θ_k, the online parameters after k steps
    state, _ = step(state, jax.tree.map(lambda x: x[0], batch))
    tau = 1 - 0.1 * (np.cos(np.pi * k / 4) + 1) / 2
    target = jax.tree.map(lambda t, o: tau * t + (1 - tau) * o, target, online)
    assert int(state.objective_state["count"]) == k + 1
    float_order.assert_close(jax.device_get(state.objective_state["params"]), target)
  # Not vacuous: the target moved and still differs from the online network.
  gap = jax.tree.map(lambda a, b: np.sum((a - b) ** 2), target, jax.device_get(state.params))
  assert np.sqrt(sum(jax.tree.leaves(gap))) > 1e-3


@pytest.mark.parametrize("method", ["barlow_twins", "vicreg", "byol"])
def test_eight_devices_equal_one_device(method, small):
  """The batch statistics of Barlow Twins and VICReg (and BatchNorm everywhere) are the global
  batch's: loss, gradients and updated state on 8 devices equal 1 device's (BYOL: with a
  predictor and a target network; SimSiam's forward is BYOL's online one)."""
  config = small(ssl_methods.get_config())
  config.loss.name = method

  def loss_grads_state(devices):
    mesh = train.create_mesh(devices)
    model, batches = _model_and_batch(config, train.create_mesh(ONE_DEVICE), num_steps=1)
    local = jax.device_get(jax.tree.map(lambda x: x[0], next(iter(batches))))
    batches.close()
    objective = objectives.create(config, mesh.devices.size, num_steps=10)
    tx = optim.create_optimizer(config.optim, lambda _: 1e-3)
    state = train.create_train_state(model, tx, (1, 16, 16, 6), 0, mesh, objective)
    fn = jax.jit(jax.value_and_grad(lambda p, s, o, b: train.compute_loss(
        p, s, o, b, jax.random.PRNGKey(0), model=model, objective=objective,
        loss_config=config.loss), has_aux=True))
    out = fn(state.params, state.batch_stats, state.objective_state,
             pipeline.to_global(local, mesh))
    return jax.device_get(out)

  one, eight = loss_grads_state(ONE_DEVICE), loss_grads_state(jax.devices())
  assert len(jax.devices()) == 8
  (total8, (metrics8, *state8)), grads8 = eight
  (total1, (metrics1, *state1)), grads1 = one
  float_order.assert_close((total8, metrics8), (total1, metrics1), float_order.ONE_PASS)
  # BatchNorm statistics, the objective's state and the gradient, each as one vector: some of
  # their leaves are round-off around 0 (the predictor's BatchNorm mean: its input is the head's
  # output, batch-normalised to mean 0; Barlow Twins standardises z again, so the head's output
  # BatchNorm scale reaches the loss only through BatchNorm's ε).
  for a, b in [(state8, state1), (grads8, grads1)]:
    float_order.assert_close(ravel_pytree(a)[0], ravel_pytree(b)[0], float_order.ONE_PASS)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_end_to_end_and_resumes_exactly(method, tmp_path, monkeypatch, small):
  from tests.test_train import _crash_after  # pylint: disable=g-import-not-at-top
  config = small(ssl_methods.get_config())
  config.loss.name = method
  for name in ("knn", "online_probe", "embeddings", "curve"):  # compiled elsewhere in the suite
    del config.evals[name]
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"), ONE_DEVICE)
  assert uninterrupted["step"] == 6 and 0 <= uninterrupted["linear_eval"]["label"] <= 1
  assert uninterrupted["metrics"]["embedding_std"] > 0
  if method != "byol":  # the one with a state of its own: its resume is the one to check
    return
  _crash_after(3, monkeypatch)
  with pytest.raises(RuntimeError):
    train.train_and_evaluate(config, str(tmp_path / "b"), ONE_DEVICE)
  monkeypatch.undo()
  assert train.train_and_evaluate(config, str(tmp_path / "b"), ONE_DEVICE) == uninterrupted


def _collapsing_loss(z1, z2, batch, key, cfg):
  """Pull every embedding towards every other one: the fastest way to a collapsed embedding."""
  z = losses.l2_normalize(jnp.concatenate([z1, z2]))
  return -jnp.mean(z @ z.T)


def test_a_collapsed_embedding_is_reported_once_naming_the_step(tmp_path, small, monkeypatch,
                                                                  caplog):
  monkeypatch.setitem(objectives.TWO_VIEW_LOSSES, "collapse", _collapsing_loss)
  monkeypatch.setitem(objectives.OBJECTIVES, "collapse", objectives._two_view("collapse"))
  monkeypatch.setitem(objectives.FIELDS, "collapse", {})
  config = small(ssl_methods.get_config(), num_steps=40)
  config.loss.name = "collapse"
  config.model.head_output_batchnorm = False  # an output BatchNorm would keep the dimensions apart
  config.optim.learning_rate = 1e-2
  config.train.log_every_steps = 10
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(config, str(tmp_path), ONE_DEVICE)
  warnings = [r.getMessage() for r in caplog.records if "has collapsed" in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert "The embedding has collapsed at step " in warnings[0]
  assert result["metrics"]["embedding_std"] < train.COLLAPSE_FRACTION / np.sqrt(16)
  # A healthy run says nothing.
  assert train.collapse_warning("", 5, 1 / np.sqrt(16), 16) is None


@pytest.mark.parametrize("field,value,message", [
    ("loss.name", "dino", r"loss.name='dino' is not one of: .*barlow_twins.*byol.*simsiam.*vicreg"),
    ("loss.ifm_epsilon", 0.1, "ifm_epsilon"),
    ("train.batch_size", 8, r"train.batch_size=8 is too small for loss.name='vicreg'.*>= 16"),
    ("model.predictor_hidden_dim", 0, r"model.predictor_hidden_dim=0 must be > 0"),
    ("loss.lambd", -1.0, r"loss.lambd=-1.0 must be >= 0"),
])
def test_bad_input_is_refused_before_compiling(field, value, message, tmp_path, small):
  config = small(ssl_methods.get_config())
  config.loss.name = {"train.batch_size": "vicreg", "loss.lambd": "barlow_twins"}.get(field,
                                                                                     "byol")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(validate.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path), ONE_DEVICE)
  assert not os.path.exists(tmp_path / "checkpoints")


def test_a_predictor_method_outside_its_config_names_the_config(tmp_path, digits_config):
  digits_config.loss.name = "simsiam"
  with pytest.raises(validate.ConfigError, match="start from configs/ssl_methods.py"):
    train.train_and_evaluate(digits_config, str(tmp_path), ONE_DEVICE)
