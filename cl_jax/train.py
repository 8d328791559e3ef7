"""The training loop: one recipe for every method and every evaluation.

Methods differ only in their `objectives.Objective` (the loss, and for MoCo a state of its own);
what is measured, and when, is the `evaluators` the config declares. Data parallel: `jax.jit` over
a 1-D mesh ("data",) — batches sharded on axis 0, state replicated; under jit the loss and
BatchNorm see the GLOBAL batch. Every process runs this same code; only process 0 writes reports,
every process joins the checkpoints. All workdir I/O goes through `paths` (etils.epath), so the
workdir may be a bucket (gs://...).
"""
import functools
import json
import os
import time
from typing import Any, Callable, NamedTuple, Optional

from cl_jax import data as _data  # noqa: F401  first: imports TensorFlow quietly, before clu does
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions
from flax.training import train_state
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from cl_jax import (evaluate, evaluators, hosts, jit_cache, models, objectives, optim, paths,
                    spec, validate)
from cl_jax.data import pipeline, sources

# Config fields that may differ between a checkpoint and the run that resumes it: they change
# neither the training trajectory nor the state's shapes.
RESUMABLE_CHANGES = ("data.data_dir", "train.log_every_steps", "train.checkpoint_every_steps",
                     "eval.", "evals.")


class NonFiniteError(spec.UserError, RuntimeError):
  """The loss or a gradient became NaN/inf; nothing from that step on was saved."""


class TrainState(train_state.TrainState):
  """params/opt_state/step (flax) + BatchNorm statistics + the objective's own state (MoCo: its
  key encoder and queue; None for the other methods)."""
  batch_stats: Any
  objective_state: Any = None


def create_mesh(devices=None) -> Mesh:
  """1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def create_train_state(model, tx, input_shape, seed, mesh: Mesh,
                       objective: Optional[objectives.Objective] = None) -> TrainState:
  """Initialise parameters, BatchNorm statistics, optimizer state and the objective's state
  (none without an objective), replicated on `mesh`. `seed`: an int, or a list of seeds — then
  one state per seed, stacked on a leading run axis (a vmapped group)."""
  def init(key):  # the seed's key is an argument: one compiled program serves every seed
    init_key, objective_key = jax.random.split(key)
    variables = model.init(init_key, jnp.zeros(input_shape), train=False)
    objective_state = (None if objective is None else
                       objective.init_state(model, variables, objective_key))
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables["batch_stats"], tx=tx,
                             objective_state=objective_state)
  replicated = NamedSharding(mesh, PartitionSpec())
  runs = not isinstance(seed, int)
  init_fn = jit_cache.get(  # a sweep's runs with the same model and optimizer share the program
      ("init", model, tx, objective, tuple(input_shape), mesh, runs),
      lambda: jax.jit(jax.vmap(init) if runs else init, out_shardings=replicated))
  if not runs:
    return init_fn(jax.random.PRNGKey(seed))
  return init_fn(jnp.stack([jax.random.PRNGKey(s) for s in seed]))


def run_slice(tree, run: int):
  """Run `run`'s part of a tree stacked on a leading run axis."""
  return jax.tree.map(lambda x: x[run], tree)


def split_runs(tree) -> list:
  """A tree stacked on a leading run axis → the list of each run's tree."""
  return [run_slice(tree, run) for run in range(jax.tree.leaves(tree)[0].shape[0])]


def stack_runs(trees: list, mesh: Mesh):
  """Trees of single runs → one tree stacked on a leading run axis, replicated on `mesh`."""
  return jax.jit(lambda *t: jax.tree.map(lambda *x: jnp.stack(x), *t),
                 out_shardings=NamedSharding(mesh, PartitionSpec()))(*trees)


# The config fields in which the runs of one vmapped group may differ: the train step takes them
# as traced arguments (`traced_hyperparameters`); everything else is compiled into the program.
TRACED_FIELDS = ("seed", "loss.temperature")


def group_key(config: ml_collections.ConfigDict) -> str:
  """Runs whose configs have the same key can train as one vmapped group (`train_and_evaluate_runs`):
  their configs differ at most in TRACED_FIELDS and in what is evaluated (`eval.`, `evals.`:
  each run has its own evaluators)."""
  flat = flax.traverse_util.flatten_dict(json.loads(config.to_json()), sep=".")
  return json.dumps({k: v for k, v in flat.items() if k not in TRACED_FIELDS
                     and not k.startswith(("eval.", "evals."))}, sort_keys=True)


def traced_hyperparameters(config: ml_collections.ConfigDict) -> dict:
  """The values the train step takes as (traced) arguments rather than compile-time constants —
  the seed's PRNG key and loss.temperature — so that a sweep over seeds and temperatures
  compiles one step program per shape (and the persistent compilation cache can serve it)."""
  return {"base_key": jax.random.PRNGKey(config.seed),
          "temperature": jnp.float32(config.loss.temperature)}


def compute_loss(params, batch_stats, objective_state, batch, key, *, model, objective,
                 loss_config):
  """The objective's contrastive loss + the online probes' cross-entropy on stop_gradient(h)
  (+ loss.kernel_l2·Σ‖W‖² over the kernels when set).
  Returns (total, (metrics, new batch_stats, new objective_state))."""
  out = objective.loss(model, params, batch_stats, objective_state, batch, key, loss_config)
  metrics, total = {"loss": out.loss}, out.loss
  for name, logits in out.probe_logits.items():
    labels = out.probe_labels[name]
    probe_loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    metrics[f"probe_loss/{name}"] = probe_loss
    metrics[f"probe_accuracy/{name}"] = jnp.mean(jnp.argmax(logits, -1) == labels)
    total = total + probe_loss
  if loss_config.kernel_l2:
    metrics["kernel_l2"] = loss_config.kernel_l2 * optim.kernel_l2_penalty(params)
    total = total + metrics["kernel_l2"]
  return total, (metrics, out.batch_stats, out.objective_state)


def train_step(state: TrainState, batch, hyper: dict, *, model, objective, loss_config,
               schedule):
  """One optimizer step on `compute_loss`. `hyper` = `traced_hyperparameters(config)`; the step's
  PRNG key is fold_in(base_key, step), so a resumed run draws the same keys."""
  key = jax.random.fold_in(hyper["base_key"], state.step)
  loss_config = ml_collections.ConfigDict(
      {**loss_config.to_dict(), "temperature": hyper["temperature"]}, type_safe=False)
  grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
  (total, (metrics, batch_stats, objective_state)), grads = grad_fn(
      state.params, state.batch_stats, state.objective_state, batch, key, model=model,
      objective=objective, loss_config=loss_config)
  metrics["finite"] = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(grads))
  metrics["learning_rate"] = schedule(state.step)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats,
                               objective_state=objective_state), metrics


def batch_metrics(state: TrainState, batch, *, model) -> dict:
  """Wang & Isola alignment/uniformity and the effective rank of the head outputs of the batch's
  two views (BatchNorm in training mode, its updates discarded). Called on log steps only: the
  effective rank needs an SVD, too costly for every step."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  x = objectives.interleave(batch["view1"], batch["view2"])
  (_, z, _), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return evaluate.representation_metrics(*objectives.deinterleave(z))


# An embedding has collapsed when the mean per-dimension std of z/‖z‖ over a batch
# (`losses.embedding_std`) is below this fraction of 1/√d, its value for embeddings spread over
# the sphere; a collapsed run's features carry (almost) nothing the evaluators can read.
COLLAPSE_FRACTION = 0.1


def collapse_warning(name: str, step: int, std: float, embed_dim: int) -> Optional[str]:
  """The warning for a run whose embedding std at `step` says it has collapsed, else None."""
  if not np.isfinite(std) or std * np.sqrt(embed_dim) >= COLLAPSE_FRACTION:
    return None  # a non-finite std is a diverged run: NonFiniteError says so
  return (f"{name}The embedding has collapsed at step {step}: the mean per-dimension std of "
          f"z/‖z‖ is {std:.2g}, below {COLLAPSE_FRACTION} × 1/√d = "
          f"{COLLAPSE_FRACTION / np.sqrt(embed_dim):.2g} (d = {embed_dim}); every image maps to "
          "nearly the same embedding.")


class Programs(NamedTuple):
  """What the configs of a group compile to: the model, objective and optimizer, the train step
  jitted and vmapped over the runs (donating the state), the log steps' `batch_metrics` of one
  run, and `for_checkpoint`: state → (`all_finite`, `split_runs`)."""
  model: Any
  objective: objectives.Objective
  tx: optax.GradientTransformation
  step: Callable
  metrics: Callable
  for_checkpoint: Callable


def training_programs(config: ml_collections.ConfigDict, mesh: Mesh, label_classes: dict,
                      per_epoch: int, num_steps: int) -> Programs:
  """The `Programs` of `config`, built once per process for configs with the same `group_key`,
  mesh, label classes and step counts (`jit_cache`): the next run of a sweep calls the same
  jitted functions, without tracing or compiling them again."""
  def build():
    model = models.create_model(config.model, label_classes,
                                predictor=config.loss.name in objectives.WITH_PREDICTOR)
    objective = objectives.create(config, mesh.devices.size, num_steps)
    schedule = optim.learning_rate_schedule(config.optim, config.train.batch_size, num_steps,
                                            per_epoch)
    step = jax.jit(jax.vmap(functools.partial(train_step, model=model, objective=objective,
                                              loss_config=config.loss, schedule=schedule)),
                   donate_argnums=(0,))
    # Run by run: XLA:CPU hung on a vmapped SVD (the effective rank) of 3 runs on 2 devices.
    metrics = jax.jit(lambda state, batch, run: batch_metrics(
        run_slice(state, run), run_slice(batch, run), model=model))
    for_checkpoint = jax.jit(lambda state: (all_finite(state), split_runs(state)))
    return Programs(model, objective, optim.create_optimizer(config.optim, schedule), step,
                    metrics, for_checkpoint)
  return jit_cache.get(("train", group_key(config), mesh, tuple(sorted(label_classes.items())),
                        per_epoch, num_steps), build)


def config_differences(saved: dict, current: dict, allowed=RESUMABLE_CHANGES) -> list[str]:
  """"field: checkpoint X vs now Y" for every field of two config dicts that differs, except
  those starting with one of the `allowed` prefixes, and fields added to the configs after the
  checkpoint was written that are at a value that changes nothing (0, False, None, 'none')."""
  flat_saved = flax.traverse_util.flatten_dict(saved, sep=".")
  flat_current = flax.traverse_util.flatten_dict(current, sep=".")
  added_off = {k for k, v in flat_current.items()
               if k not in flat_saved and v in (0, False, None, "none")}
  return [f"{k}: checkpoint {flat_saved.get(k)!r} vs now {flat_current.get(k)!r}"
          for k in sorted(set(flat_saved) | set(flat_current))
          if flat_saved.get(k) != flat_current.get(k) and not k.startswith(tuple(allowed))
          and k not in added_off]


def all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is free of NaN and inf."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.floating)]))


def raise_if_nonfinite(finite, step: int, managers: list):
  """Stop at the first step whose loss or gradient was not finite in any run of the group
  (`finite`: [runs] booleans), naming the runs and their kept checkpoints."""
  finite = np.asarray(finite).reshape(-1)
  if finite.all():
    return
  kept = []
  for run in np.flatnonzero(~finite):
    latest = managers[run].latest_step()
    kept.append(f"The last good checkpoint, step {latest} in {managers[run].directory}, is kept; "
                "rerunning resumes from it (and would diverge again with the same settings)."
                if latest else f"{managers[run].directory} holds no checkpoint yet.")
  raise NonFiniteError(
      f"Training stopped: the loss or its gradient became non-finite (NaN or inf) at step "
      f"{step}, and nothing from that step on was saved. {' '.join(kept)} Try a lower "
      "optim.learning_rate, a warm-up (optim.warmup_epochs) or a higher loss.temperature.")


def checkpoint_manager(workdir, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """Orbax manager under workdir/checkpoints. If it holds a checkpoint written with an
  incompatible config, raise a `ConfigError` listing the differences (nothing is touched)."""
  manager = ocp.CheckpointManager(
      paths.workdir_path(workdir) / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
      item_names=("state", "config"))
  latest = manager.latest_step()
  if latest is not None:
    saved = manager.restore(latest, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    differences = config_differences(saved["config"], json.loads(config.to_json()))
    if differences:
      raise validate.ConfigError(
          f"workdir {workdir} holds a checkpoint (step {latest}) of a different experiment; "
          "resuming it with this config would not continue the same run. Use a new --workdir, "
          "or the checkpoint's settings. Differences: " + "; ".join(differences))
  return manager


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, devices=None) -> dict:
  """Train per `config`, checkpointing into `workdir` (a local path or a bucket URI; resuming from
  the latest checkpoint), run the evaluators of `config.evals` when due, and write and return
  their results (workdir/eval.json). One run: `train_and_evaluate_runs` with a group of one.

  Raises `spec.ConfigError` / `sources.DataError` before compiling for bad input,
  `hosts.Preempted` after saving on SIGTERM, `NonFiniteError` when the loss diverges.
  """
  return train_and_evaluate_runs([config], [workdir], devices)[0]


def check_group(configs: list):
  """Refuse a group whose configs differ in more than TRACED_FIELDS (one program trains it)."""
  keys = [group_key(c) for c in configs]
  if len(set(keys)) > 1:
    first, other = (flax.traverse_util.flatten_dict(json.loads(c.to_json()), sep=".")
                    for c in (configs[0], configs[keys.index(next(k for k in keys
                                                                  if k != keys[0]))]))
    fields = sorted(k for k in set(first) | set(other)
                    if first.get(k) != other.get(k) and k not in TRACED_FIELDS
                    and not k.startswith(("eval.", "evals.")))
    raise validate.ConfigError(
        f"Runs trained as one vmapped group may differ only in {', '.join(TRACED_FIELDS)}; "
        f"these differ too: {', '.join(fields)}. Train them in separate groups "
        "(the sweep groups its runs this way).")


def train_and_evaluate_runs(configs: list, workdirs: list, devices=None) -> list[dict]:
  """Train a group of runs whose configs differ only in TRACED_FIELDS (seeds, temperatures) as
  ONE vmapped program: state, batches and hyperparameters carry a leading run axis, and every
  step advances every run. Each run keeps its own workdir, checkpoints (the same as a run of its
  own: a group may be resumed run by run and vice versa), TensorBoard events, evaluators and
  eval.json; the frozen features of all runs are extracted together (`evaluators.GroupFeatures`),
  the evaluators run run by run. Returns each run's results.
  """
  # ---- Checks, data and step counts (before anything compiles).
  mesh = create_mesh(devices)
  check_group(configs)
  for config in configs:
    validate.check_config(config, mesh.devices.size, jax.process_count())
  workdirs = [paths.workdir_path(w) for w in workdirs]
  for workdir in workdirs:
    validate.check_workdir(workdir)
  config = configs[0]  # what the group shares
  train_split = sources.load(config.data, "train")
  test_split = sources.load(config.data, "test")
  label_classes = pipeline.label_classes(train_split, config.data)
  validate.check_data(config, len(train_split), label_classes)
  batch_size = config.train.batch_size
  per_epoch = pipeline.steps_per_epoch(len(train_split), batch_size)
  num_steps = config.train.num_steps if config.train.num_steps > 0 else (
      config.train.num_epochs * per_epoch)
  managers = [checkpoint_manager(w, c) for w, c in zip(workdirs, configs)]
  start_step = common_start_step(managers)

  # ---- Input pipeline, model, objective, optimizer, jitted step, state (restored).
  seeds = [c.seed for c in configs]
  batches = pipeline.TrainBatches(train_split, config.data, seeds=seeds, batch_size=batch_size,
                                  start_step=start_step, num_steps=num_steps, mesh=mesh)
  model, objective, tx, step_fn, metrics_fn, for_checkpoint = training_programs(
      config, mesh, label_classes, per_epoch, num_steps)
  state = create_train_state(model, tx, (1, *batches.image_shape), seeds, mesh, objective)
  if start_step:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, run_slice(state, 0))
    state = stack_runs([manager.restore(start_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"] for manager in managers], mesh)
    logging.info("Resumed from checkpoint at step %d.", start_step)

  # ---- Each run's traced hyperparameters, writers, progress, evaluators.
  hyper = jax.tree.map(lambda *x: jnp.stack(x), *map(traced_hyperparameters, configs))
  writers = [metric_writers.create_default_writer(os.fspath(w),
                                                  just_logging=jax.process_index() > 0)
             for w in workdirs]
  if start_step == 0:
    for writer, c in zip(writers, configs):
      writer.write_hparams(flax.traverse_util.flatten_dict(c.to_dict(), sep="."))
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writers[0],
                                             every_steps=config.train.log_every_steps)
  evaluations = [evaluators.Evaluations(c.evals, w, start_step)
                 for c, w in zip(configs, workdirs)]

  def evaluate(step, state, last):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    group = evaluators.GroupFeatures(model, variables, train_split, test_split, configs, mesh)
    for run, (c, w) in enumerate(zip(configs, workdirs)):
      context = lambda run=run, c=c, w=w: evaluators.Context(
          model=model, variables=run_slice(variables, run), train_split=train_split,
          test_split=test_split, config=c, mesh=mesh, workdir=w, step=step, group=group, run=run)
      evaluations[run].run(step, last, context, writers[run])

  t_last, s_last = time.time(), start_step
  collapsed = set()  # the runs already warned about

  def report(step, step_metrics: list, run_metrics: list):
    """Write the mean of `step_metrics` since the last report and the log step's `batch_metrics`
    of every run to TensorBoard and the log, with steps/s and the ETA."""
    nonlocal t_last, s_last
    summary = {k: np.mean([m[k] for m in jax.device_get(step_metrics)], axis=0)
               for k in step_metrics[0]}
    per_run = jax.device_get(run_metrics)
    summary.update({k: np.array([m[k] for m in per_run]) for k in per_run[0]})
    rate = (step - s_last) / (time.time() - t_last)
    t_last, s_last = time.time(), step
    eta = time.strftime("%H:%M:%S", time.gmtime((num_steps - step) / max(rate, 1e-9)))
    for run, (writer, w) in enumerate(zip(writers, workdirs)):
      scalars = {k: float(v[run]) for k, v in summary.items()}
      writer.write_scalars(step, scalars)
      name = f"{w.name}: " if len(configs) > 1 else ""
      logging.info("%sstep %d/%d | %s | %.1f steps/s | ETA %s", name, step, num_steps,
                   " | ".join(f"{k} {v:.4g}" for k, v in scalars.items()), rate, eta)
      warning = collapse_warning(name, step, scalars["embedding_std"], config.model.embed_dim)
      if warning and run not in collapsed:
        collapsed.add(run)
        logging.warning(warning)

  def save(step, state, finite):
    """Checkpoint every run after step `step` — only if that step and the state are finite."""
    state_finite, runs = for_checkpoint(state)  # one program checks and slices every run
    raise_if_nonfinite(np.asarray(finite) & bool(state_finite), step, managers)
    for run, (manager, c) in enumerate(zip(managers, configs)):
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(runs[run]),
          config=ocp.args.JsonSave(json.loads(c.to_json()))))

  # ---- Train. A log step's report and each step's finiteness are read one step late, after the
  # next step is dispatched (the device does not wait for the host's logging), and finiteness
  # before every save; on SIGTERM every process saves the current step and stops; an exception
  # still lets in-flight checkpoints finish.
  logging.info("Training %d steps (%d per epoch) of global batch %d on %d device(s)%s.",
               num_steps, per_epoch, batch_size, mesh.devices.size,
               f", {len(configs)} runs as one vmapped program" if len(configs) > 1 else "")
  if start_step == 0:
    evaluate(0, state, False)  # probe curves start at the initial encoder
  pending, report_due, previous_finite = [], None, None
  try:
    with hosts.PreemptionWatch() as preemption:
      for step, batch in zip(range(start_step + 1, num_steps + 1), batches):
        state, metrics = step_fn(state, batch, hyper)
        if report_due:
          report(*report_due)
          report_due = None
        finite = metrics.pop("finite")
        if previous_finite is not None:
          raise_if_nonfinite(previous_finite, step - 1, managers)
        previous_finite = finite
        pending.append(metrics)
        progress(step)
        if step % config.train.log_every_steps == 0 or step == num_steps:
          # Finished before the next step starts: XLA:CPU deadlocks when two programs with
          # collectives run at once (this one and the next step both read the state).
          report_due = (step, pending, jax.block_until_ready(
              [metrics_fn(state, batch, run) for run in range(len(configs))]))
          pending = []
        evaluate(step, state, False)
        preempted = preemption.reached(step, managers[0])
        if preempted or step % config.train.checkpoint_every_steps == 0 or step == num_steps:
          save(step, state, finite)
        if preempted:
          raise hosts.Preempted(step, ", ".join(str(m.directory) for m in managers))
      if report_due:
        report(*report_due)
  finally:
    batches.close()
    for manager in managers:
      manager.wait_until_finished()
      manager.close()
    for writer in writers:
      writer.flush()

  # ---- Evaluate (every process computes; process 0 writes).
  evaluate(num_steps, state, True)
  results = []
  for evaluation, w in zip(evaluations, workdirs):
    result = {"step": num_steps, **evaluation.results()}
    if jax.process_index() == 0:
      paths.write_json(w / "eval.json", result)
    evaluation.log_summary(num_steps)
    results.append(result)
  return results


def common_start_step(managers: list) -> int:
  """The step a group resumes from: the latest step every run has a checkpoint of (a group
  stopped while saving may have one run a save ahead; each run keeps its last two)."""
  latest = [m.latest_step() or 0 for m in managers]
  start = min(latest)
  for manager, step in zip(managers, latest):
    if start and start != step and start not in manager.all_steps():
      raise validate.ConfigError(
          f"The runs of this group were saved at different steps ({', '.join(map(str, latest))}) "
          f"and {manager.directory} no longer holds step {start}; resume its runs one by one "
          "(cl_jax.main, or the sweep with --parallel_runs=1).")
  return start
