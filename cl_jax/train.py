"""The training loop: one recipe for every method; methods differ only in their loss.

Data parallel: `jax.jit` over a 1-D mesh ("data",) — batches sharded on axis 0, state replicated.
Under jit the loss and BatchNorm see the GLOBAL batch (negatives and statistics span all devices).
"""
import json
import logging as std_logging
import os
import time
from typing import Any

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

from cl_jax import evaluate, losses, models, optim, validate
from cl_jax.data import pipeline, sources

# Config fields that may differ between a checkpoint and the run that resumes it: they change
# neither the training trajectory nor the state's shapes.
RESUMABLE_CHANGES = ("data.data_dir", "train.log_every_steps", "train.checkpoint_every_steps",
                     "eval.")


def quiet_library_logs():
  """Keep orbax's per-save INFO chatter and clu's echo of every scalar (already in our progress
  line and in TensorBoard) out of the absl log; warnings still show."""
  def keep(record) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/clu/metric_writers/logging_writer"))
  logging.get_absl_handler().addFilter(keep)


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_mesh(devices=None) -> Mesh:
  """1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def create_train_state(model, tx, input_shape, seed: int, mesh: Mesh) -> TrainState:
  """Initialise parameters, BatchNorm statistics and optimizer state, replicated on `mesh`."""
  def init():
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros(input_shape), train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables["batch_stats"], tx=tx)
  return jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec()))()


def compute_loss(params, batch_stats, batch, key, *, model, loss_config):
  """Contrastive loss on the global batch + online-probe cross-entropy on stop_gradient(h).

  Both views go through the encoder as ONE batch [view1; view2] (BatchNorm statistics over 2B).
  Returns (total, (metrics, new_batch_stats)).
  """
  n = batch["view1"].shape[0]
  x = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
  (_, z, probe_logits), updated = model.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
  contrastive = losses.CONTRASTIVE_LOSSES[loss_config.name](z[:n], z[n:], batch, key,
                                                            loss_config)
  metrics = {"loss": contrastive, **evaluate.representation_metrics(z[:n], z[n:])}
  total = contrastive
  for name, logits in probe_logits.items():
    labels = jnp.concatenate([batch[name], batch[name]])
    probe_loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    metrics[f"probe_loss/{name}"] = probe_loss
    metrics[f"probe_accuracy/{name}"] = jnp.mean(jnp.argmax(logits, -1) == labels)
    total = total + probe_loss
  return total, (metrics, updated["batch_stats"])


def train_step(state: TrainState, batch, *, model, loss_config, base_key, schedule):
  """One optimizer step. The step's PRNG key is fold_in(base_key, step): resumable."""
  key = jax.random.fold_in(base_key, state.step)
  grad_fn = jax.grad(compute_loss, has_aux=True)
  grads, (metrics, batch_stats) = grad_fn(state.params, state.batch_stats, batch, key,
                                          model=model, loss_config=loss_config)
  metrics["learning_rate"] = schedule(state.step)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def _config_differences(saved: dict, current: dict) -> list[str]:
  flat_saved = flax.traverse_util.flatten_dict(saved, sep=".")
  flat_current = flax.traverse_util.flatten_dict(current, sep=".")
  return [f"{k}: checkpoint {flat_saved.get(k)!r} vs now {flat_current.get(k)!r}"
          for k in sorted(set(flat_saved) | set(flat_current))
          if flat_saved.get(k) != flat_current.get(k)
          and not any(k.startswith(p) for p in RESUMABLE_CHANGES)]


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """Orbax manager under workdir/checkpoints. If it holds a checkpoint written with an
  incompatible config, raise a `ConfigError` listing the differences (nothing is touched)."""
  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Train per `config`, checkpointing into `workdir` (resuming from the latest checkpoint), then
  write and return the linear evaluation (workdir/eval.json)."""
  # ---- Checks, data and step counts (before anything compiles).
  mesh = create_mesh(devices)
  validate.check_config(config, mesh.devices.size, jax.process_count())
  train_split = sources.load(config.data, "train")
  test_split = sources.load(config.data, "test")
  batch_size = config.train.batch_size
  per_epoch = pipeline.steps_per_epoch(len(train_split), batch_size)
  if per_epoch == 0:
    raise validate.ConfigError(f"train.batch_size={batch_size} is larger than the training set "
                               f"({len(train_split)} examples of '{config.data.dataset}').")
  num_steps = config.train.num_steps if config.train.num_steps > 0 else (
      config.train.num_epochs * per_epoch)
  manager = checkpoint_manager(workdir, config)

  # ---- Model, optimizer, state (restored when the workdir has a checkpoint).
  model = models.create_model(config.model, train_split.num_classes)
  schedule = optim.learning_rate_schedule(config.optim, batch_size, num_steps, per_epoch)
  tx = optim.create_optimizer(config.optim, schedule)
  channels = train_split.images.shape[-1] + config.data.random_bits
  input_shape = (1, config.data.image_size, config.data.image_size, channels)
  state = create_train_state(model, tx, input_shape, config.seed, mesh)
  start_step = manager.latest_step() or 0
  if start_step:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = manager.restore(start_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    logging.info("Resumed from checkpoint at step %d.", start_step)

  # ---- Jitted step, writers, progress.
  step_fn = jax.jit(
      lambda s, b: train_step(s, b, model=model, loss_config=config.loss,
                              base_key=jax.random.PRNGKey(config.seed), schedule=schedule),
      donate_argnums=(0,))
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(flax.traverse_util.flatten_dict(config.to_dict(), sep="."))
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                             every_steps=config.train.log_every_steps)
  batches = pipeline.global_batches(pipeline.train_dataset(
      train_split, config.data, seed=config.seed, batch_size=batch_size, start_step=start_step,
      num_steps=num_steps, process_index=jax.process_index(),
      process_count=jax.process_count()), mesh)

  # ---- Train (an exception still lets in-flight checkpoints finish).
  logging.info("Training %d steps (%d per epoch) of global batch %d on %d device(s).",
               num_steps, per_epoch, batch_size, mesh.devices.size)
  pending, t_last, s_last = [], time.time(), start_step
  try:
    for step, batch in zip(range(start_step + 1, num_steps + 1), batches):
      state, metrics = step_fn(state, batch)
      pending.append(metrics)
      progress(step)
      if step % config.train.log_every_steps == 0 or step == num_steps:
        summary = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
        pending = []
        writer.write_scalars(step, summary)
        rate = (step - s_last) / (time.time() - t_last)
        t_last, s_last = time.time(), step
        eta = time.strftime("%H:%M:%S", time.gmtime((num_steps - step) / max(rate, 1e-9)))
        logging.info("step %d/%d | %s | %.1f steps/s | ETA %s", step, num_steps,
                     " | ".join(f"{k} {v:.4g}" for k, v in summary.items()), rate, eta)
      if step % config.train.checkpoint_every_steps == 0 or step == num_steps:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(config.to_json()))))
  finally:
    manager.wait_until_finished()
    manager.close()

  # ---- Evaluate.
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  linear = evaluate.linear_eval(model, variables, train_split, test_split, config, mesh)
  representation = evaluate.test_representation_metrics(model, variables, test_split, config,
                                                        mesh)
  writer.write_scalars(num_steps, {**{f"linear_eval/{k}": v for k, v in linear.items()},
                                   **{f"test_metrics/{k}": v for k, v in representation.items()}})
  writer.flush()
  result = {"step": num_steps, "linear_eval": linear, "metrics": representation}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(result, f, indent=2)
  logging.info("Linear evaluation (test accuracy) at step %d:\n%s", num_steps,
               "\n".join(f"  {k:<14} {v:.4f}" for k, v in linear.items()))
  return result
