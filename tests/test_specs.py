"""Config specs and the evaluator registry: fields a choice ignores, fields it needs, and a new
evaluator registered from outside the library."""
import json

import jax
import jax.numpy as jnp
import pytest

from cl_jax import evaluators, models, objectives, optim, spec, train, validate
from cl_jax.data import features
from configs import generalized_losses, moco_ifm, simclr_randbit

ONE_DEVICE = jax.devices()[:1]


@pytest.mark.parametrize("make,overrides,message", [
    (generalized_losses.get_config, {"loss.ifm_epsilon": 0.1},
     r"loss.ifm_epsilon=0.1 has no effect with loss.name='generalized': only 'joint', 'moco', "
     r"'ntxent', 'ntxent_cross_view', 'supcon' read it. Set loss.ifm_epsilon=0.0"),
    (simclr_randbit.get_config, {"model.encoder": "resnet18_cifar", "model.conv_padding": "VALID"},
     r"model.conv_padding='VALID' has no effect with model.encoder='resnet18_cifar': only "
     r"'convnet' read it"),
    (moco_ifm.get_config, {"train.concat_views": False},
     r"train.concat_views=False has no effect with loss.name='moco'"),
])
def test_a_field_the_chosen_method_ignores_is_refused_before_compiling(
    make, overrides, message, tmp_path, monkeypatch, small):
  config = small(make())
  spec.apply_overrides(config, overrides)
  monkeypatch.setattr(train, "create_train_state", lambda *a, **k: pytest.fail("compiled"))
  with pytest.raises(validate.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path), ONE_DEVICE)
  assert not (tmp_path / "checkpoints" / "1").exists()


def test_parameters_of_other_methods_may_stay_when_switching_on_the_command_line():
  """moco_ifm's queue settings stay in the config when loss.name switches to ntxent (the IFM
  sweep does this): they switch nothing on, so they are not refused."""
  config = moco_ifm.get_config()
  config.loss.name = "ntxent"
  validate.check_config(config, num_devices=1)
  config.loss.name = "generalized"  # ε = 0.1 (moco_ifm's) is an effect generalized cannot have
  for field, value in [("lam", 1.0), ("prior", "gaussian"), ("hidden_norm", False),
                       ("scale", 1.0)]:
    config.loss[field] = value
  with pytest.raises(validate.ConfigError, match="loss.ifm_epsilon=0.1 has no effect"):
    validate.check_config(config, num_devices=1)


def test_adam_reads_optim_momentum_as_beta1():
  config = simclr_randbit.get_config()
  assert "momentum" in optim.OPTIMIZER_FIELDS["adam"]
  params = {"w": jax.numpy.ones(3)}
  grads = [{"w": jax.numpy.array([1.0, -2.0, 0.5])}, {"w": jax.numpy.array([-1.0, 0.5, 2.0])}]
  updates = {}
  for b1 in (0.9, 0.5):
    config.optim.momentum = b1
    tx = optim.create_optimizer(config.optim, lambda _: 1e-2)
    state = tx.init(params)
    for g in grads:  # the second update depends on β1 through the first-moment average
      u, state = tx.update(g, state, params)
    updates[b1] = u["w"]
  assert float(abs(updates[0.9] - updates[0.5]).max()) > 1e-4


def test_every_choice_declares_its_fields_and_the_default_configs_pass():
  assert set(objectives.FIELDS) == set(objectives.OBJECTIVES)
  assert set(models.ENCODER_FIELDS) == set(models.ENCODERS)
  assert set(features.SCENES) >= {"none", "digits_on_images", "multidigits", "digit_sizes",
                                  "backgrounds"}
  for field in objectives.FIELDS["generalized"]:
    assert field not in objectives.FIELDS["ntxent"]
  validate.check_config(simclr_randbit.get_config(), num_devices=1)
  validate.check_config(moco_ifm.get_config(), num_devices=1)
  with pytest.raises(spec.ConfigError, match="evals.knn.type='knm' is not one of: embeddings, "
                                             "kmeans, knn, linear, metrics, online"):
    config = simclr_randbit.get_config()
    config.evals.knn.type = "knm"
    validate.check_config(config, num_devices=1)


def _count_test_images(context, cfg):
  """A new evaluation: the number of valid test rows, and a setting read from its config."""
  _, test = context.features()
  return {"test_images": float(test.valid.sum()), "scale": cfg.scale}


def test_an_evaluator_registered_from_outside_runs_when_due_and_lands_in_eval_json(
    tmp_path, monkeypatch, small):
  monkeypatch.setitem(evaluators.EVALUATORS, "count",
                      evaluators.Evaluator(_count_test_images, {"scale": spec.positive()}))
  config = small(simclr_randbit.get_config(), num_steps=4)
  config.evals.counted = dict(type="count", scale=2.0)                  # at the end
  config.evals.counted_often = dict(type="count", scale=3.0, every_steps=2, at_end=False)
  result = train.train_and_evaluate(config, str(tmp_path), ONE_DEVICE)
  assert result["counted"] == {"test_images": 450.0, "scale": 2.0}   # 25 % of the 1,797 digits
  assert result["counted_often"] == [{"step": 0, "test_images": 450.0, "scale": 3.0},
                                     {"step": 2, "test_images": 450.0, "scale": 3.0},
                                     {"step": 4, "test_images": 450.0, "scale": 3.0}]
  assert json.loads((tmp_path / "eval.json").read_text()) == result
  assert json.loads((tmp_path / "counted_often.json").read_text()) == result["counted_often"]
  assert {"linear_eval", "online_probe", "knn", "metrics"} <= set(result)

  config.evals.counted.scale = -1.0
  with pytest.raises(validate.ConfigError, match="evals.counted.scale=-1.0 must be > 0"):
    train.train_and_evaluate(config, str(tmp_path / "bad"), ONE_DEVICE)


def _corner_scene(data_config, split, train):
  """A test scene: a white square of data.patch_size px in a random quadrant of the example's
  digit, the quadrant drawn per read (shared by both views) and labelled `corner`."""
  del split, train
  size, patch = data_config.image_size, data_config.patch_size

  def compose(arrays, image, index, read_key, view_key):
    del arrays, index, view_key
    corner = jax.random.randint(read_key, (), 0, 4)
    y, x = (corner // 2) * (size - patch), (corner % 2) * (size - patch)
    return features.place(image, jnp.ones((patch, patch, image.shape[-1])), y, x), {
        "corner": corner}
  return features.Scene(compose, {}, {"corner": 4}, uses_image=True)


def _check_corner(data):
  if not 1 <= data.patch_size <= data.image_size // 2:
    raise spec.ConfigError(f"data.patch_size={data.patch_size} must be in [1, "
                           f"{data.image_size // 2}].")


def test_a_scene_registered_from_outside_trains_and_is_probed(tmp_path, monkeypatch, small):
  """A scene is one registry entry: builder, fields, size check; nothing else to edit."""
  monkeypatch.setitem(features.SCENES, "corner", features.SceneType(
      build=_corner_scene, fields={"patch_size": spec.positive()}, check_sizes=_check_corner))
  config = small(simclr_randbit.get_config(), num_steps=4)
  config.data.scene = "corner"
  config.data.patch_size = 4
  result = train.train_and_evaluate(config, str(tmp_path), ONE_DEVICE)
  assert set(result["linear_eval"]) == {"label", "corner", "bits"}
  assert result["linear_eval"]["corner"] > 0.5  # a white corner patch: trivially decodable
  config.data.patch_size = 9
  with pytest.raises(validate.ConfigError, match=r"data.patch_size=9 must be in \[1, 8\]"):
    train.train_and_evaluate(config, str(tmp_path / "bad"), ONE_DEVICE)
  config.data.streaming = True
  config.data.patch_size = 4
  config.data.dataset = "mnist"
  with pytest.raises(validate.ConfigError, match="data.scene='corner' .* cannot stream"):
    train.train_and_evaluate(config, str(tmp_path / "bad"), ONE_DEVICE)
