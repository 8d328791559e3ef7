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
from typing import Any, Optional

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

from cl_jax import evaluate, evaluators, hosts, models, objectives, optim, paths, spec, validate
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


def create_train_state(model, tx, input_shape, seed: int, mesh: Mesh,
                       objective: Optional[objectives.Objective] = None) -> TrainState:
  """Initialise parameters, BatchNorm statistics, optimizer state and the objective's state
  (none without an objective), replicated on `mesh`."""
  def init(key):  # the seed's key is an argument: one compiled program serves every seed
    init_key, objective_key = jax.random.split(key)
    variables = model.init(init_key, jnp.zeros(input_shape), train=False)
    objective_state = (None if objective is None else
                       objective.init_state(model, variables, objective_key))
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables["batch_stats"], tx=tx,
                             objective_state=objective_state)
  return jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec()))(
      jax.random.PRNGKey(seed))


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
  x = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
  (_, z, _), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  n = batch["view1"].shape[0]
  return evaluate.representation_metrics(z[:n], z[n:])


def _config_differences(saved: dict, current: dict) -> list[str]:
  flat_saved = flax.traverse_util.flatten_dict(saved, sep=".")
  flat_current = flax.traverse_util.flatten_dict(current, sep=".")
  return [f"{k}: checkpoint {flat_saved.get(k)!r} vs now {flat_current.get(k)!r}"
          for k in sorted(set(flat_saved) | set(flat_current))
          if flat_saved.get(k) != flat_current.get(k)
          and not any(k.startswith(p) for p in RESUMABLE_CHANGES)]


@jax.jit
def all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is free of NaN and inf."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.floating)]))


def raise_if_nonfinite(finite, step: int, manager: ocp.CheckpointManager):
  """Stop at the first step whose loss or gradient was not finite, naming the kept checkpoint."""
  if bool(finite):
    return
  latest = manager.latest_step()
  kept = (f"The last good checkpoint, step {latest} in {manager.directory}, is kept; rerunning "
          "resumes from it (and would diverge again with the same settings)." if latest else
          "No checkpoint had been written yet.")
  raise NonFiniteError(
      f"Training stopped: the loss or its gradient became non-finite (NaN or inf) at step "
      f"{step}, and nothing from that step on was saved. {kept} Try a lower "
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
    differences = _config_differences(saved["config"], json.loads(config.to_json()))
    if differences:
      raise validate.ConfigError(
          f"workdir {workdir} holds a checkpoint (step {latest}) of a different experiment; "
          "resuming it with this config would not continue the same run. Use a new --workdir, "
          "or the checkpoint's settings. Differences: " + "; ".join(differences))
  return manager


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, devices=None) -> dict:
  """Train per `config`, checkpointing into `workdir` (a local path or a bucket URI; resuming from
  the latest checkpoint), run the evaluators of `config.evals` when due, and write and return
  their results (workdir/eval.json).

  Raises `spec.ConfigError` / `sources.DataError` before compiling for bad input,
  `hosts.Preempted` after saving on SIGTERM, `NonFiniteError` when the loss diverges.
  """
  # ---- Checks, data and step counts (before anything compiles).
  mesh = create_mesh(devices)
  validate.check_config(config, mesh.devices.size, jax.process_count())
  workdir = paths.workdir_path(workdir)
  validate.check_workdir(workdir)
  train_split = sources.load(config.data, "train")
  test_split = sources.load(config.data, "test")
  label_classes = pipeline.label_classes(train_split, config.data)
  validate.check_data(config, len(train_split), label_classes)
  batch_size = config.train.batch_size
  per_epoch = pipeline.steps_per_epoch(len(train_split), batch_size)
  num_steps = config.train.num_steps if config.train.num_steps > 0 else (
      config.train.num_epochs * per_epoch)
  manager = checkpoint_manager(workdir, config)

  # ---- Input pipeline, model, objective, optimizer, state (restored from a checkpoint).
  start_step = manager.latest_step() or 0
  batches = pipeline.TrainBatches(train_split, config.data, seed=config.seed,
                                  batch_size=batch_size, start_step=start_step,
                                  num_steps=num_steps, mesh=mesh)
  model = models.create_model(config.model, label_classes)
  objective = objectives.create(config, mesh.devices.size)
  schedule = optim.learning_rate_schedule(config.optim, batch_size, num_steps, per_epoch)
  tx = optim.create_optimizer(config.optim, schedule)
  input_shape = (1, *batches.image_shape)
  state = create_train_state(model, tx, input_shape, config.seed, mesh, objective)
  if start_step:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = manager.restore(start_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    logging.info("Resumed from checkpoint at step %d.", start_step)

  # ---- Jitted step, writers, progress, evaluators.
  step_fn = jax.jit(functools.partial(train_step, model=model, objective=objective,
                                      loss_config=config.loss, schedule=schedule),
                    donate_argnums=(0,))
  hyper = traced_hyperparameters(config)
  metrics_fn = jax.jit(functools.partial(batch_metrics, model=model))
  writer = metric_writers.create_default_writer(os.fspath(workdir),
                                                just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(flax.traverse_util.flatten_dict(config.to_dict(), sep="."))
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                             every_steps=config.train.log_every_steps)
  evaluations = evaluators.Evaluations(config.evals, workdir, start_step)

  def context(step, state):
    return lambda: evaluators.Context(
        model=model, variables={"params": state.params, "batch_stats": state.batch_stats},
        train_split=train_split, test_split=test_split, config=config, mesh=mesh,
        workdir=workdir, step=step)

  def save(step, state, finite):
    """Checkpoint `state` after step `step` — only if that step and the state are finite."""
    raise_if_nonfinite(bool(finite) and bool(all_finite(state)), step, manager)
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(json.loads(config.to_json()))))

  # ---- Train. Each step's finiteness is checked one step late (dispatch stays asynchronous) and
  # before every save; on SIGTERM every process saves the current step and stops; an exception
  # still lets in-flight checkpoints finish.
  logging.info("Training %d steps (%d per epoch) of global batch %d on %d device(s).",
               num_steps, per_epoch, batch_size, mesh.devices.size)
  pending, t_last, s_last, previous_finite = [], time.time(), start_step, None
  try:
    with hosts.PreemptionWatch() as preemption:
      for step, batch in zip(range(start_step + 1, num_steps + 1), batches):
        state, metrics = step_fn(state, batch, hyper)
        finite = metrics.pop("finite")
        if previous_finite is not None:
          raise_if_nonfinite(previous_finite, step - 1, manager)
        previous_finite = finite
        pending.append(metrics)
        progress(step)
        if step % config.train.log_every_steps == 0 or step == num_steps:
          summary = {k: float(np.mean([m[k] for m in jax.device_get(pending)]))
                     for k in pending[0]}
          summary.update({k: float(v) for k, v in metrics_fn(state, batch).items()})
          pending = []
          writer.write_scalars(step, summary)
          rate = (step - s_last) / (time.time() - t_last)
          t_last, s_last = time.time(), step
          eta = time.strftime("%H:%M:%S", time.gmtime((num_steps - step) / max(rate, 1e-9)))
          logging.info("step %d/%d | %s | %.1f steps/s | ETA %s", step, num_steps,
                       " | ".join(f"{k} {v:.4g}" for k, v in summary.items()), rate, eta)
        evaluations.run(step, False, context(step, state), writer)
        preempted = preemption.reached(step, manager)
        if preempted or step % config.train.checkpoint_every_steps == 0 or step == num_steps:
          save(step, state, finite)
        if preempted:
          raise hosts.Preempted(step, manager.directory)
  finally:
    batches.close()
    manager.wait_until_finished()
    manager.close()
    writer.flush()

  # ---- Evaluate (every process computes; process 0 writes).
  evaluations.run(num_steps, True, context(num_steps, state), writer)
  result = {"step": num_steps, **evaluations.results()}
  if jax.process_index() == 0:
    paths.write_json(workdir / "eval.json", result)
  evaluations.log_summary(num_steps)
  return result
