"""8 fake CPU devices give the same loss, gradients and BatchNorm statistics as 1 device on the
same global batch (negatives and BN statistics span the whole global batch)."""
import functools
import subprocess
import sys

import jax
import numpy as np
import pytest

from cl_jax import hosts, models, objectives, optim, train
from cl_jax.data import pipeline, sources
from tests import float_order
from tests.conftest import REPO, subprocess_env


def test_eight_devices_equal_one_device(digits_config):
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  config = digits_config
  split = sources.load(config.data, "train")
  local = jax.device_get(next(iter(pipeline.TrainBatches(
      split, config.data, seeds=[0], batch_size=32, start_step=0, num_steps=1,
      mesh=train.create_mesh(jax.devices()[:1])))))
  local = jax.tree.map(lambda x: x[0], local)
  model = models.create_model(config.model, split.num_classes)
  tx = optim.create_optimizer(config.optim, lambda _: 1e-3)
  input_shape = (1, 16, 16, 1 + config.data.random_bits)

  def loss_grads_stats(mesh):
    state = train.create_train_state(model, tx, input_shape, 0, mesh)
    batch = pipeline.to_global(local, mesh)
    assert len(batch["view1"].sharding.device_set) == mesh.devices.size
    loss = functools.partial(train.compute_loss, model=model,
                             objective=objectives.create(config, mesh.devices.size),
                             loss_config=config.loss)
    fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (total, (metrics, stats, _)), grads = fn(state.params, state.batch_stats, None, batch,
                                          jax.random.PRNGKey(0))
    return jax.device_get((total, metrics, stats, grads))

  one = loss_grads_stats(train.create_mesh(jax.devices()[:1]))
  eight = loss_grads_stats(train.create_mesh(jax.devices()))
  assert jax.tree.structure(one) == jax.tree.structure(eight)
  # The global batch's sums in another order (per-device partial sums, then an all-reduce).
  float_order.assert_close(eight, one, float_order.ONE_PASS)
  # Guard against a vacuous comparison: the statistics were really updated from the batch.
  init = train.create_train_state(model, tx, input_shape, 0, train.create_mesh(jax.devices()[:1]))
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), one[2],
                       jax.device_get(init.batch_stats))
  assert max(jax.tree.leaves(moved)) > 1e-3


def test_cpu_device_count_is_a_divisor_of_the_batch_up_to_the_cores():
  assert hosts.cpu_device_count(256, cores=2) == 2
  assert hosts.cpu_device_count(256, cores=6) == 4
  assert hosts.cpu_device_count(6, cores=4) == 3
  assert hosts.cpu_device_count(7, cores=2) == 1
  assert hosts.cpu_device_count(256, cores=1) == 1
  assert hosts.cpu_device_count(256, cores=64) == hosts.MAX_CPU_DEVICES


_USE_CORES = """
import jax
from cl_jax import hosts
{before}
print(hosts.use_cpu_cores(6), jax.device_count())
"""


@pytest.mark.parametrize("case", ["default", "XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "started"])
def test_use_cpu_cores_splits_the_cpu_unless_the_count_is_chosen(case):
  """cl_jax.main's device choice on CPU: one device per core (a divisor of the batch), unless
  the user set a count or JAX already started (then the count is left as it is)."""
  env = {k: v for k, v in subprocess_env().items() if k != "JAX_NUM_CPU_DEVICES"}
  if case == "XLA_FLAGS":
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=3"
  elif case == "JAX_NUM_CPU_DEVICES":
    env["JAX_NUM_CPU_DEVICES"] = "3"
  code = _USE_CORES.format(before="jax.devices()" if case == "started" else "")
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  returned, devices = map(int, done.stdout.split())
  if case == "default":
    expected = hosts.cpu_device_count(6, hosts.usable_cores())
    assert returned == devices == expected
  else:
    assert returned == 0 and devices == (1 if case == "started" else 3)


def test_entry_points_keep_compiled_programs_in_a_persistent_cache(tmp_path):
  """cli.setup turns on JAX's persistent compilation cache in $XDG_CACHE_HOME/cl_jax/xla: a
  compiled program lands there; CL_JAX_COMPILATION_CACHE=0 and multi-process jobs leave it off."""
  script = ("import jax, jax.numpy as jnp; from cl_jax import cli; cli.setup(8); "
            "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready(); "
            "print('CACHE', jax.config.jax_compilation_cache_dir)")
  folder = tmp_path / "cl_jax" / "xla"
  for switch, expected in (("1", str(folder)), ("0", "None")):
    env = {**subprocess_env(), "XDG_CACHE_HOME": str(tmp_path), "CL_JAX_COMPILATION_CACHE": switch,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"CACHE {expected}" in done.stdout
    if switch == "1":
      assert any(folder.iterdir())  # the compiled program
      entries = len(list(folder.iterdir()))
    else:
      assert len(list(folder.iterdir())) == entries  # nothing new written
