"""Throughput of the input pipeline and of the jitted train step (compilation excluded).

  python benchmarks/throughput.py --config=configs/simclr_randbit.py [--config.x.y=v ...] \
      [--steps=200] [--out=results.json]

Prints and optionally writes JSON: device, global batch, pipeline batches/s, train steps/s and
examples/s on one fixed device-resident batch, compile time of the train step, and eval_s: the
wall time of the final linear evaluation (feature extraction + L-BFGS probes, compiles included).
"""
import functools
import json
import time

from cl_jax import cli, evaluate, models, optim, paths, train, validate
from cl_jax.data import pipeline, sources

import jax  # noqa: E402  (after cl_jax.data, which imports TensorFlow quietly)
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/simclr_randbit.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 200, "Timed steps (after warm-up).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")


def main(_):
  tf.config.set_visible_devices([], "GPU")
  config, steps = _CONFIG.value, _STEPS.value
  mesh = train.create_mesh()
  validate.check_config(config, mesh.devices.size)
  split = sources.load(config.data, "train")
  batch_size = config.train.batch_size
  per_epoch = pipeline.steps_per_epoch(len(split), batch_size)

  ds = pipeline.train_dataset(split, config.data, seed=config.seed, batch_size=batch_size,
                              start_step=0, num_steps=steps + 10)
  it = ds.as_numpy_iterator()
  local = [next(it) for _ in range(10)][-1]  # warm-up
  t = time.perf_counter()
  for _ in range(steps):
    next(it)
  pipeline_rate = steps / (time.perf_counter() - t)

  model = models.create_model(config.model, split.num_classes)
  schedule = optim.learning_rate_schedule(config.optim, batch_size, steps, per_epoch)
  tx = optim.create_optimizer(config.optim, schedule)
  shape = (1, *local["view1"].shape[1:])
  state = train.create_train_state(model, tx, shape, config.seed, mesh)
  step_fn = jax.jit(functools.partial(
      train.train_step, model=model, loss_config=config.loss, schedule=schedule),
      donate_argnums=(0,))
  hyper = train.traced_hyperparameters(config)
  batch = pipeline.to_global(local, mesh)
  t = time.perf_counter()
  compiled = step_fn.lower(state, batch, hyper).compile()
  compile_s = time.perf_counter() - t
  state, metrics = compiled(state, batch, hyper)
  jax.block_until_ready(metrics)
  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, hyper)
  jax.block_until_ready(metrics)
  step_rate = steps / (time.perf_counter() - t)

  test_split = sources.load(config.data, "test")
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  t = time.perf_counter()
  evaluate.linear_eval(model, variables, split, test_split, config, mesh)
  eval_s = time.perf_counter() - t

  result = {"device": str(jax.devices()[0].device_kind), "num_devices": mesh.devices.size,
            "dataset": config.data.dataset, "encoder": config.model.encoder,
            "image_shape": list(shape[1:]), "global_batch": batch_size,
            "pipeline_batches_per_s": round(pipeline_rate, 2),
            "train_steps_per_s": round(step_rate, 2),
            "train_examples_per_s": round(step_rate * batch_size, 1),
            "compile_s": round(compile_s, 2), "eval_s": round(eval_s, 2)}
  print(json.dumps(result, indent=2))
  if _OUT.value:
    paths.write_json(_OUT.value, result)


if __name__ == "__main__":
  cli.run(main)
