"""8 fake CPU devices give the same loss, gradients and BatchNorm statistics as 1 device on the
same global batch (negatives and BN statistics span the whole global batch)."""
import functools

import jax
import numpy as np

from cl_jax import models, optim, train
from cl_jax.data import pipeline, sources


def test_eight_devices_equal_one_device(digits_config):
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  config = digits_config
  split = sources.load(config.data, "train")
  local = next(pipeline.train_dataset(split, config.data, seed=0, batch_size=32, start_step=0,
                                      num_steps=1).as_numpy_iterator())
  model = models.create_model(config.model, split.num_classes)
  tx = optim.create_optimizer(config.optim, lambda _: 1e-3)
  input_shape = (1, 16, 16, 1 + config.data.random_bits)

  def loss_grads_stats(mesh):
    state = train.create_train_state(model, tx, input_shape, 0, mesh)
    batch = pipeline.to_global(local, mesh)
    assert len(batch["view1"].sharding.device_set) == mesh.devices.size
    loss = functools.partial(train.compute_loss, model=model, loss_config=config.loss)
    fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (total, (metrics, stats, _)), grads = fn(state.params, state.batch_stats, batch,
                                          jax.random.PRNGKey(0))
    return jax.device_get((total, metrics, stats, grads))

  one = loss_grads_stats(train.create_mesh(jax.devices()[:1]))
  eight = loss_grads_stats(train.create_mesh(jax.devices()))
  leaves_one, tree_one = jax.tree.flatten(one)
  leaves_eight, tree_eight = jax.tree.flatten(eight)
  assert tree_one == tree_eight
  for a, b in zip(leaves_one, leaves_eight):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # float32 reduction order
  # Guard against a vacuous comparison: the statistics were really updated from the batch.
  init = train.create_train_state(model, tx, input_shape, 0, train.create_mesh(jax.devices()[:1]))
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), one[2],
                       jax.device_get(init.batch_stats))
  assert max(jax.tree.leaves(moved)) > 1e-3
