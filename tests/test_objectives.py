"""SCL / joint / MoCo+IFM in the training loop: momentum encoder, queue, coarse labels, curve."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cl_jax import losses, models, objectives, optim, train, validate
from cl_jax.data import pipeline, sources
from configs import moco_ifm, supcon_joint
from tests import float_order
from tests.test_train import _crash_after

# Keys of shuffle-BN against an explicit per-group reference (test_shuffle_bn_matches_...).
BN_OF_TWO_ROWS = 1e-3

ONE_DEVICE = jax.devices()[:1]


def test_momentum_update_is_the_ema():
  key = {"w": jnp.array([1.0, 2.0])}
  query = {"w": jnp.array([3.0, -2.0])}
  np.testing.assert_allclose(objectives.momentum_update(key, query, 0.9)["w"], [1.2, 1.6], rtol=1e-6)
  assert objectives.momentum_update(key, query, 0.0)["w"].tolist() == [3.0, -2.0]


def test_queue_is_fifo_over_whole_batches():
  queue, ptr = jnp.zeros((6, 2)), jnp.zeros((), jnp.int32)
  batches = [jnp.full((2, 2), float(i)) for i in range(1, 5)]
  for b in batches:
    queue, ptr = objectives.enqueue(queue, ptr, b)
  assert queue.shape == (6, 2) and int(ptr) == 2
  # Batch 1 (the oldest) was overwritten by batch 4; 2, 3, 4 remain.
  assert sorted(set(queue[:, 0].tolist())) == [2.0, 3.0, 4.0]
  np.testing.assert_array_equal(queue[:2], batches[3])


def test_moco_step_moves_key_encoder_and_fills_queue(tmp_path, small):
  config = small(moco_ifm.get_config())
  config.loss.queue_size = 128
  mesh = train.create_mesh(ONE_DEVICE)
  split = sources.load(config.data, "train")
  model = models.create_model(config.model, split.num_classes)
  tx = optim.create_optimizer(config.optim, lambda _: 1e-2)
  objective = objectives.create(config, mesh.devices.size)
  state = train.create_train_state(model, tx, (1, 16, 16, 6), 0, mesh, objective)
  before = jax.device_get(state)
  np.testing.assert_allclose(jnp.linalg.norm(before.objective_state["queue"], axis=1), 1.0,
                             rtol=1e-5)
  batches = pipeline.TrainBatches(split, config.data, seeds=[0], batch_size=64, start_step=0,
                                  num_steps=2, mesh=mesh)
  step = jax.jit(lambda s, b: train.train_step(s, b, train.traced_hyperparameters(config),
                                               model=model, objective=objective,
                                               loss_config=config.loss, schedule=lambda _: 1e-2))
  query_params = [before.params]
  for batch in batches:
    state, _ = step(state, jax.tree.map(lambda x: x[0], batch))
    query_params.append(jax.device_get(state.params))
  after = jax.device_get(state)
  assert int(after.objective_state["queue_ptr"]) == 0  # 2 batches of 64 filled K = 128
  assert not np.allclose(after.objective_state["queue"], before.objective_state["queue"])
  np.testing.assert_allclose(jnp.linalg.norm(after.objective_state["queue"], axis=1), 1.0, rtol=1e-5)
  # The key encoder is moved before each step's forward pass (as in MoCo): after step 1
  # θ_k = m·θ_k0 + (1 − m)·θ_q0 = θ_q0 (θ_k0 is a copy), after step 2 θ_k = m·θ_q0 + (1 − m)·θ_q1.
  m = config.loss.momentum
  expected = jax.tree.map(lambda q0, q1: m * q0 + (1 - m) * q1, *query_params[:2])
  float_order.assert_close(after.objective_state["params"], expected)  # the EMA, rounded again
  assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(after.objective_state["params"]),
                                                 jax.tree.leaves(before.params))) > 0

  # The whole state (queue, pointer, key encoder) survives an Orbax round trip.
  manager = train.checkpoint_manager(str(tmp_path), config)
  manager.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(json.loads(config.to_json()))))
  manager.wait_until_finished()
  fresh = train.create_train_state(model, tx, (1, 16, 16, 6), 1, mesh, objective)
  restored = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(
      jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh))))["state"]
  for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


def test_coarse_labels_for_digits_and_cifar100():
  import tensorflow_datasets as tfds
  digits = sources.load_digits("train", 8)
  split = sources.class_and_subclass(digits, "digits")
  np.testing.assert_array_equal(split.labels["subclass"], digits.labels["label"])
  np.testing.assert_array_equal(split.labels["label"], digits.labels["label"] >= 5)
  assert dict(split.num_classes) == {"label": 2, "subclass": 10}
  with tfds.testing.mock_data(num_examples=10):
    cifar = sources.load_tfds("cifar100", "train", 8)
  split = sources.class_and_subclass(cifar, "cifar100")
  np.testing.assert_array_equal(split.labels["label"], cifar.labels["coarse_label"])
  np.testing.assert_array_equal(split.labels["subclass"], cifar.labels["label"])
  with pytest.raises(sources.DataError, match="has no coarse labels"):
    sources.class_and_subclass(sources.Split(digits.images, {"label": digits.labels["label"]},
                                             {"label": 10}), "cifar10")


@pytest.mark.parametrize("loss", ["supcon", "joint", "ntxent"])
def test_scl_ucl_joint_train_with_coarse_labels_and_curve(loss, tmp_path, small):
  config = small(supcon_joint.get_config())
  config.loss.name = loss
  config.evals.curve.every_steps = 3
  result = train.train_and_evaluate(config, str(tmp_path), ONE_DEVICE)
  assert set(result["linear_eval"]) == set(result["linear_eval_z"]) == {"label", "subclass", "bits"}
  assert [p["step"] for p in result["curve"]] == [0, 3, 6]
  assert set(result["curve"][0]) == {"step", "label", "subclass", "bits"}
  with open(tmp_path / "curve.json") as f:
    assert json.load(f) == result["curve"]
  assert (tmp_path / "curve.png").stat().st_size > 1000


def test_moco_and_curve_resume_exactly(tmp_path, monkeypatch, small):
  config = small(moco_ifm.get_config())
  config.loss.queue_size = 128
  config.evals.curve.every_steps = 2
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"), ONE_DEVICE)
  _crash_after(3, monkeypatch)
  with pytest.raises(RuntimeError):
    train.train_and_evaluate(config, str(tmp_path / "b"), ONE_DEVICE)
  monkeypatch.undo()
  resumed = train.train_and_evaluate(config, str(tmp_path / "b"), ONE_DEVICE)
  assert resumed == uninterrupted
  assert [p["step"] for p in resumed["curve"]] == [0, 2, 4, 6]  # step 0 kept across the resume


@pytest.mark.parametrize("make,field,value,message", [
    (moco_ifm.get_config, "loss.queue_size", 100, "multiple of train.batch_size"),
    (moco_ifm.get_config, "loss.momentum", 1.0, r"loss.momentum=1.0 must be in \[0, 1\)"),
    (supcon_joint.get_config, "loss.beta", 1.5, r"loss.beta=1.5 must be in \[0, 1\]"),
    (supcon_joint.get_config, "loss.supervised_label", "fine", "is not a label of 'digits'"),
    (supcon_joint.get_config, "loss.ifm_epsilon", -0.1, "loss.ifm_epsilon=-0.1 must be >= 0"),
])
def test_objective_config_errors(make, field, value, message, tmp_path, small):
  config = small(make())
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(validate.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path), ONE_DEVICE)
  assert not os.path.exists(tmp_path / "checkpoints" / "2")


def test_supcon_outside_its_config_names_the_config(tmp_path):
  from configs import simclr_randbit
  config = simclr_randbit.get_config()
  config.loss.name = "supcon"
  with pytest.raises(validate.ConfigError,
                     match=r"needs loss.supervised_label; start from configs/supcon_joint.py"):
    train.train_and_evaluate(config, str(tmp_path))


def test_moco_config_can_switch_to_a_simclr_loss(tmp_path, small):
  """The IFM sweep compares methods from one config: loss.name=ntxent must not build MoCo state."""
  config = small(moco_ifm.get_config())
  config.loss.name = "ntxent"
  config.train.num_steps = 2
  result = train.train_and_evaluate(config, str(tmp_path), ONE_DEVICE)
  assert result["step"] == 2


def test_views_one_at_a_time_normalise_each_view_with_its_own_statistics():
  """train.concat_views=False (the randbits colab): z1 = f(view1), z2 = f(view2) in training
  mode, BatchNorm statistics per view, running averages updated by view 1 then view 2; the loss
  is the cross-view NT-Xent plus the online probe's cross-entropy on both views."""
  from configs import simclr_randbit  # pylint: disable=g-import-not-at-top
  config = simclr_randbit.get_config("mnist_colab")
  config.loss.kernel_l2 = 0.0
  model = models.create_model(config.model, {"label": 10})
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  batch = {"view1": jax.random.uniform(k1, (8, 16, 16, 3)),
           "view2": jax.random.uniform(k2, (8, 16, 16, 3)),
           "label": jax.random.randint(k3, (8,), 0, 10)}
  variables = model.init(jax.random.PRNGKey(1), batch["view1"], train=False)
  total, (metrics, stats, _) = train.compute_loss(
      variables["params"], variables["batch_stats"], None, batch, None, model=model,
      objective=objectives.create(config, 1), loss_config=config.loss)

  apply = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  (_, z1, logits1), after1 = apply(variables, batch["view1"])
  (_, z2, logits2), after2 = apply({"params": variables["params"], **after1}, batch["view2"])
  contrastive = losses.ntxent_cross_view(z1, z2, config.loss.temperature)
  ce = lambda logits: -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), batch["label"]])
  probe = 0.5 * (ce(logits1["label"]) + ce(logits2["label"]))
  np.testing.assert_allclose(metrics["loss"], contrastive, rtol=1e-5)
  np.testing.assert_allclose(total, contrastive + probe, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(after2["batch_stats"])):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  # One batch of both views normalises with the pooled statistics: a different loss.
  config.train.concat_views = True
  pooled, _ = train.compute_loss(variables["params"], variables["batch_stats"], None, batch, None,
                                 model=model, objective=objectives.create(config, 1),
                                 loss_config=config.loss)
  assert abs(float(pooled) - float(total)) > 1e-4


def test_shuffle_bn_matches_an_explicit_per_group_reference(small):
  """MoCo's keys: the batch permuted, cut into bn_groups slices, each through the key encoder in
  training mode on its own (its own BatchNorm statistics), un-permuted; queries: slices in batch
  order. Written here as a loop over groups."""
  config = small(moco_ifm.get_config())
  model = models.create_model(config.model, {"label": 10})
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  batch = {"view1": jax.random.uniform(k1, (8, 16, 16, 6)),
           "view2": jax.random.uniform(k2, (8, 16, 16, 6)),
           "label": jax.random.randint(k3, (8,), 0, 10)}
  variables = model.init(jax.random.PRNGKey(1), batch["view1"], train=False)
  queue = losses.l2_normalize(jax.random.normal(k3, (16, config.model.embed_dim)))
  momentum = {"params": jax.tree.map(lambda p: p * 1.01, variables["params"]),
              "batch_stats": variables["batch_stats"], "queue": queue,
              "queue_ptr": jnp.zeros((), jnp.int32)}
  step_key = jax.random.PRNGKey(7)

  def run(groups):
    config.loss.bn_groups = groups
    return train.compute_loss(variables["params"], variables["batch_stats"], momentum, batch,
                              step_key, model=model, objective=objectives.create(config, 1),
                              loss_config=config.loss)

  apply = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  # The objective first moves the key encoder towards the query encoder (EMA), then encodes.
  key_vars = {"params": objectives.momentum_update(momentum["params"], variables["params"],
                                                   config.loss.momentum),
              "batch_stats": momentum["batch_stats"]}
  shuffle = np.asarray(jax.random.permutation(jax.random.fold_in(step_key, 0x5B), 8))
  for groups in (1, 2, 4):
    total, (metrics, stats, new_state) = run(groups)
    key_stats, keys = new_state["batch_stats"], new_state["queue"][:8]  # enqueued at 0
    size = 8 // groups
    ref_keys, ref_queries, ref_key_stats = np.zeros((8, config.model.embed_dim)), [], []
    for g in range(groups):
      rows = shuffle[g * size:(g + 1) * size]
      (_, k, _), updated = apply(key_vars, batch["view2"][rows])
      ref_keys[rows] = k
      ref_key_stats.append(updated["batch_stats"])
      (_, q, _), _ = apply(variables, batch["view1"][g * size:(g + 1) * size])
      ref_queries.append(q)
    # float32 rounding differs between the vmapped slices and this loop, and BatchNorm over 2
    # rows divides it by their small spread: measured ≤ 7.3e-5 of the keys' norm (1.7e-5 for the
    # loss) under SSE4_2, so BN_OF_TWO_ROWS = 1e-3 leaves a 13× margin; global statistics
    # instead of the group's move the keys by > 1e-2 of their norm (checked below).
    float_order.assert_close(keys, losses.l2_normalize(ref_keys), BN_OF_TWO_ROWS)
    ref_loss = losses.moco_infonce(jnp.concatenate(ref_queries), ref_keys, queue,
                                   config.loss.temperature, ifm_epsilon=config.loss.ifm_epsilon)
    float_order.assert_close(metrics["loss"], ref_loss, BN_OF_TWO_ROWS)
    mean_stats = jax.tree.map(lambda *s: sum(s) / groups, *ref_key_stats)
    float_order.assert_close(key_stats, mean_stats)
    if groups == 1:
      global_keys = keys
  assert np.abs(keys - global_keys).max() > 1e-2  # per-group statistics change the keys
  assert float_order.norm_difference(keys, global_keys)[0] > 10 * BN_OF_TWO_ROWS


def test_interleaved_views_give_the_concatenated_reference_and_stay_on_their_devices(small):
  """The objective encodes [v1_0, v2_0, v1_1, …]; the loss and the probes' targets equal those of
  the reference that encodes [v1; v2] (BatchNorm statistics are the same set of rows), and
  under an 8-device mesh the interleaving needs no all-to-all of the images."""
  config = small(supcon_joint.get_config())
  split = sources.load(config.data, "train")
  model = models.create_model(config.model, pipeline.label_classes(split, config.data))
  rng = np.random.default_rng(0)
  shape = (16, config.data.image_size, config.data.image_size, 1 + config.data.random_bits)
  batch = {"view1": jnp.asarray(rng.random(shape), jnp.float32),
           "view2": jnp.asarray(rng.random(shape), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 2, 16)),
           "subclass": jnp.asarray(rng.integers(0, 10, 16))}
  variables = model.init(jax.random.PRNGKey(0), batch["view1"][:2], train=False)
  objective = objectives.create(config, 1)
  out = objective.loss(model, variables["params"], variables["batch_stats"], None, batch,
                       jax.random.PRNGKey(1), config.loss)
  x = jnp.concatenate([batch["view1"], batch["view2"]])
  (_, z, logits), updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  reference = losses.joint(z[:16], z[16:], batch["label"], config.loss.temperature,
                           config.loss.beta)
  np.testing.assert_allclose(out.loss, reference, rtol=1e-5)
  for name in logits:  # the same rows in another order: BatchNorm's sums reordered
    pairs = objectives.deinterleave(out.probe_logits[name])
    float_order.assert_close(jnp.concatenate(pairs), logits[name])
    np.testing.assert_array_equal(objectives.deinterleave(out.probe_labels[name])[1], batch[name])
  float_order.assert_close(out.batch_stats, updated["batch_stats"])
  sharding = jax.sharding.NamedSharding(train.create_mesh(), jax.sharding.PartitionSpec("data"))
  hlo = jax.jit(objectives.interleave, in_shardings=(sharding, sharding)).lower(
      batch["view1"], batch["view2"]).compile().as_text()
  assert not any(op in hlo for op in ("all-to-all", "all-gather", "collective-permute"))
