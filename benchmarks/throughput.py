"""Throughput of the input pipeline and of the jitted train step (compilation excluded).

  python benchmarks/throughput.py --config=configs/simclr_randbit.py [--config.x.y=v ...] \
      [--steps=200] [--runs=9] [--profile=15] [--out=results.json]

Prints and optionally writes JSON: device, global batch; device_views_batches_per_s (the two
views as the training loop makes them: on the device for in-memory splits, scenes included; host
tf.data + device for streamed splits) and host_pipeline_batches_per_s (tf.data's share alone,
`pipeline.train_dataset`: for an in-memory split only a gather); train
steps/s on one fixed device-resident batch and with data (views + step, as the loop runs them);
with --runs=R, run-steps/s of R runs as one vmapped group (vmapped_run_steps_per_s, and its ratio
to one run with data); compile time of the train step; and eval_s: the wall time of the final
linear evaluation (feature extraction + L-BFGS probes, compiles included).
With --profile=K, also `step_profile`: where the step's time goes — the K XLA operations (fusions,
matmuls, copies) with the most time per step in a jax.profiler trace of 20 steps, as
[name, ms per step, calls per step] —, `step_profile_by_kind`: ms per step summed over operations
of one kind (the name without its ".N" suffix; kinds with ≥ 1% of the total; on CPU "ynn_fusion"
are the matmuls, "concatenate" and "pad_slice_fusion" the ConvNet's im2col), and
`step_profile_ms`, all operations' total per step (operations on parallel threads overlap, so it
can exceed the step's wall time).
"""
import collections
import json
import pathlib
import re
import tempfile
import time

from cl_jax import cli, evaluators, paths, train, validate
from cl_jax.data import pipeline, sources

import jax  # noqa: E402  (after cl_jax.data, which imports TensorFlow quietly)
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/simclr_randbit.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 200, "Timed steps (after warm-up).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")
_RUNS = flags.DEFINE_integer("runs", 1, "Also time this many runs (seeds) as one vmapped "
                             "group: vmapped_run_steps_per_s.")
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


def rate(run, steps: int) -> float:
  """Calls per second of `run(steps)` (which blocks until its work is done), after one warm-up."""
  run(1)
  t = time.perf_counter()
  run(steps)
  return steps / (time.perf_counter() - t)


def main(_):
  config, steps, num_runs = _CONFIG.value, _STEPS.value, _RUNS.value
  cli.setup(config.train.batch_size)  # as cl_jax.main: on CPU a device per core
  mesh = train.create_mesh()
  validate.check_config(config, mesh.devices.size)
  split = sources.load(config.data, "train")
  batch_size = config.train.batch_size
  per_epoch = pipeline.steps_per_epoch(len(split), batch_size)
  seeds = [config.seed + r for r in range(num_runs)]

  def make_batches(run_seeds):
    return iter(pipeline.TrainBatches(split, config.data, seeds=run_seeds, batch_size=batch_size,
                                      start_step=0, num_steps=10**9, mesh=mesh))

  # The views alone (device-resident split, or the host's JPEG crops + device views).
  views = make_batches(seeds[:1])
  views_rate = rate(lambda n: jax.block_until_ready([next(views) for _ in range(n)]), steps)
  # The host's share alone (tf.data: streamed reads and crops; for an in-memory split only a
  # gather, which the resident path does on the device instead).
  host = pipeline.train_dataset(split, config.data, seed=config.seed, batch_size=batch_size,
                                start_step=0, num_steps=10**9).as_numpy_iterator()
  host_rate = rate(lambda n: [next(host) for _ in range(n)], steps)
  del host, views  # stop their prefetching: it would take cores from the timings below

  # The training loop's own model, objective, optimizer and jitted (vmapped) step.
  model, objective, tx, step_fn, _, _ = train.training_programs(
      config, mesh, pipeline.label_classes(split, config.data), per_epoch, steps)
  batches = make_batches(seeds[:1])
  first = next(batches)
  shape = (1, *first["view1"].shape[2:])

  def runs_of(run_seeds):
    state = train.create_train_state(model, tx, shape, run_seeds, mesh, objective)
    hyper = jax.tree.map(lambda *x: jax.numpy.stack(x), *[
        train.traced_hyperparameters(config) for _ in run_seeds])
    return state, hyper

  state, hyper = runs_of(seeds[:1])
  t = time.perf_counter()
  compiled = step_fn.lower(state, first, hyper).compile()
  compile_s = time.perf_counter() - t

  # As in the training loop, at most two steps are in flight (it reads each step's finiteness
  # one step late); XLA:CPU with 2 devices sometimes deadlocked in a collective of the step when
  # a hundred steps were queued at once.
  def steps_of(fn, get_batch, state, hyper, n):
    previous = None
    for _ in range(n):
      state, out = fn(state, get_batch(), hyper)
      jax.block_until_ready(previous)
      previous = out
    jax.block_until_ready(out)
    return state

  def fixed_batch(n):  # the step alone, on one device-resident batch
    nonlocal state
    state = steps_of(compiled, lambda: first, state, hyper, n)

  def with_data(n):  # the training loop's work: views and step
    nonlocal state
    state = steps_of(compiled, lambda: next(batches), state, hyper, n)

  step_rate = rate(fixed_batch, steps)
  data_rate = rate(with_data, steps)
  profile = {}
  if _PROFILE.value:
    profile = op_profile(fixed_batch, _PROFILE.value)
  group = {}
  if num_runs > 1:  # a vmapped group of runs (seeds), views included
    group_state, group_hyper = runs_of(seeds)
    group_batches = make_batches(seeds)

    def group_steps(n):
      nonlocal group_state
      group_state = steps_of(step_fn, lambda: next(group_batches), group_state, group_hyper, n)
    group_rate = rate(group_steps, max(steps // num_runs, 2)) * num_runs
    group = {"runs": num_runs, "vmapped_run_steps_per_s": round(group_rate, 2),
             "vmapped_vs_sequential": round(group_rate / data_rate, 3)}

  test_split = sources.load(config.data, "test")
  variables = train.run_slice({"params": state.params, "batch_stats": state.batch_stats}, 0)
  t = time.perf_counter()
  context = evaluators.Context(model, variables, split, test_split, config, mesh,
                               workdir=None, step=steps)
  evaluators.EVALUATORS["linear"].evaluate(context, config.evals.linear_eval)
  eval_s = time.perf_counter() - t

  result = {"device": str(jax.devices()[0].device_kind), "num_devices": mesh.devices.size,
            "dataset": config.data.dataset, "encoder": config.model.encoder,
            "image_shape": list(shape[1:]), "global_batch": batch_size,
            "views_on_device": pipeline.resident(split),
            "device_views_batches_per_s": round(views_rate, 2),
            "host_pipeline_batches_per_s": round(host_rate, 2),
            "train_steps_per_s": round(step_rate, 2),
            "train_steps_per_s_with_data": round(data_rate, 2),
            "with_data_vs_fixed_batch": round(data_rate / step_rate, 3),
            "train_examples_per_s": round(step_rate * batch_size, 1),
            **group, "compile_s": round(compile_s, 2), "eval_s": round(eval_s, 2), **profile}
  print(json.dumps(result, indent=2))
  if _OUT.value:
    paths.write_json(_OUT.value, result)


if __name__ == "__main__":
  cli.run(main)
