"""Throughput of the input pipeline and of the jitted train step (compilation excluded).

  python benchmarks/throughput.py --config=configs/simclr_randbit.py [--config.x.y=v ...] \
      [--steps=200] [--profile=15] [--out=results.json]

Prints and optionally writes JSON: device, global batch, pipeline batches/s, train steps/s and
examples/s on one fixed device-resident batch, compile time of the train step, and eval_s: the
wall time of the final linear evaluation (feature extraction + L-BFGS probes, compiles included).
With --profile=K, also `step_profile`: where the step's time goes — the K XLA operations (fusions,
matmuls, copies) with the most time per step in a jax.profiler trace of 20 steps, as
[name, ms per step, calls per step] —, `step_profile_by_kind`: ms per step summed over operations
of one kind (the name without its ".N" suffix; kinds with ≥ 1% of the total; on CPU "ynn_fusion"
are the matmuls, "concatenate" and "pad_slice_fusion" the ConvNet's im2col), and
`step_profile_ms`, all operations' total per step (operations on parallel threads overlap, so it
can exceed the step's wall time).
"""
import collections
import functools
import json
import pathlib
import re
import tempfile
import time

from cl_jax import cli, evaluators, models, objectives, optim, paths, train, validate
from cl_jax.data import pipeline, sources

import jax  # noqa: E402  (after cl_jax.data, which imports TensorFlow quietly)
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/simclr_randbit.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 200, "Timed steps (after warm-up).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")
_PROFILE = flags.DEFINE_integer("profile", 0, "Report the K most expensive XLA operations of the "
                                "train step (0: no profile).")


def op_profile(run_steps, top: int, steps: int = 20) -> dict:
  """The JSON fields `step_profile` (the `top` operations), `step_profile_ms` and
  `step_profile_by_kind` (see the module docstring) of the XLA operations executed while
  `run_steps(steps)` runs, from a jax.profiler trace. Events
  are the executor's per-operation spans (CPU: one per thunk; GPU: one per kernel), taken from
  every plane and line, without Python frames and the executor's enclosing spans."""
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir):
      run_steps(steps)
    trace_files = sorted(pathlib.Path(logdir).rglob("*.xplane.pb"))
    profile = jax.profiler.ProfileData.from_file(str(trace_files[-1]))
  total_ns, calls = collections.Counter(), collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name.startswith("$") or any(word in event.name for word in (
            "Execute", "Await", "PjitFunction", "trace")):
          continue  # Python frames and the executor's spans that contain the operations
        total_ns[event.name] += event.duration_ns
        calls[event.name] += 1
  ops = [(name, round(ns / steps / 1e6, 3), round(calls[name] / steps, 1))
         for name, ns in total_ns.most_common()]
  total_ms = round(sum(total_ns.values()) / steps / 1e6, 2)
  by_kind = collections.Counter()
  for name, ms, _ in ops:
    by_kind[re.sub(r"\.\d+$", "", name)] += ms
  return {"step_profile": ops[:top], "step_profile_ms": total_ms,
          "step_profile_by_kind": {kind: round(ms, 2) for kind, ms in by_kind.most_common()
                                   if ms >= 0.01 * total_ms}}


def main(_):
  config, steps = _CONFIG.value, _STEPS.value
  cli.setup(config.train.batch_size)  # as cl_jax.main: on CPU a device per core
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
  objective = objectives.create(config, mesh.devices.size)
  state = train.create_train_state(model, tx, shape, config.seed, mesh, objective)
  step_fn = jax.jit(functools.partial(
      train.train_step, model=model, objective=objective, loss_config=config.loss,
      schedule=schedule),
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
  profile = {}
  if _PROFILE.value:
    def run_steps(n):
      nonlocal state
      for _ in range(n):
        state, out = compiled(state, batch, hyper)
      jax.block_until_ready(out)
    profile = op_profile(run_steps, _PROFILE.value)

  test_split = sources.load(config.data, "test")
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  t = time.perf_counter()
  context = evaluators.Context(model, variables, split, test_split, config, mesh,
                               workdir=None, step=steps)
  evaluators.EVALUATORS["linear"].evaluate(context, config.evals.linear_eval)
  eval_s = time.perf_counter() - t

  result = {"device": str(jax.devices()[0].device_kind), "num_devices": mesh.devices.size,
            "dataset": config.data.dataset, "encoder": config.model.encoder,
            "image_shape": list(shape[1:]), "global_batch": batch_size,
            "pipeline_batches_per_s": round(pipeline_rate, 2),
            "train_steps_per_s": round(step_rate, 2),
            "train_examples_per_s": round(step_rate * batch_size, 1),
            "compile_s": round(compile_s, 2), "eval_s": round(eval_s, 2), **profile}
  print(json.dumps(result, indent=2))
  if _OUT.value:
    paths.write_json(_OUT.value, result)


if __name__ == "__main__":
  cli.run(main)
