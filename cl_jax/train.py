"""The training loop: one recipe for every method; methods differ only in their loss.

Data parallel: `jax.jit` over a 1-D mesh ("data",) — batches sharded on axis 0, state replicated.
Under jit the loss and BatchNorm see the GLOBAL batch (negatives and statistics span all devices).
Every process runs this same code; only process 0 writes reports (eval.json, curves, PNGs), every
process joins the checkpoints. All workdir I/O goes through `paths` (etils.epath), so the workdir
may be a bucket (gs://...).
"""
import functools
import json
import logging as std_logging
import os
import time
from typing import Any

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

from cl_jax import evaluate, hosts, losses, models, optim, paths, validate
from cl_jax.analysis import curves, embeddings, local_features
from cl_jax.data import pipeline, sources

# Config fields that may differ between a checkpoint and the run that resumes it: they change
# neither the training trajectory nor the state's shapes.
RESUMABLE_CHANGES = ("data.data_dir", "train.log_every_steps", "train.checkpoint_every_steps",
                     "eval.")


class NonFiniteError(RuntimeError):
  """The loss or a gradient became NaN/inf; nothing from that step on was saved."""


_QUIET_LOGGERS = ("/orbax/", "/clu/", "/jax/_src/xla_bridge", "/etils/")


def quiet_library_logs():
  """Keep library INFO chatter (orbax's per-save lines, clu's echo of every scalar and its work
  unit notes, JAX's search for a TPU backend) out of the absl log; their warnings still show."""
  def keep(record) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in _QUIET_LOGGERS)
  logging.get_absl_handler().addFilter(keep)
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)


class TrainState(train_state.TrainState):
  """params/opt_state/step (flax) + BatchNorm statistics + MoCo's momentum encoder and queue
  (`momentum` = {params, batch_stats, queue [K, d], queue_ptr}; None for the other losses)."""
  batch_stats: Any
  momentum: Any = None


def create_mesh(devices=None) -> Mesh:
  """1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def create_train_state(model, tx, input_shape, seed: int, mesh: Mesh,
                       queue_size: int = 0) -> TrainState:
  """Initialise parameters, BatchNorm statistics and optimizer state, replicated on `mesh`.
  queue_size > 0 (MoCo): the key encoder starts as a copy of the query encoder and the queue
  holds `queue_size` random unit vectors."""
  def init(key):  # the seed's key is an argument: one compiled program serves every seed
    init_key, queue_key = jax.random.split(key)
    variables = model.init(init_key, jnp.zeros(input_shape), train=False)
    momentum = None
    if queue_size:
      queue = jax.random.normal(queue_key, (queue_size, model.head.embed_dim))
      momentum = {"params": variables["params"], "batch_stats": variables["batch_stats"],
                  "queue": losses.l2_normalize(queue), "queue_ptr": jnp.zeros((), jnp.int32)}
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables["batch_stats"], tx=tx, momentum=momentum)
  return jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec()))(
      jax.random.PRNGKey(seed))


def grouped_apply(model, variables, x, groups: int):
  """`model` in training mode on `groups` equal consecutive slices of the batch x, each slice
  normalised by its own BatchNorm statistics (a vmap over slices: the per-GPU BatchNorm of
  PyTorch DDP). Returns the outputs in batch order and the BatchNorm running averages averaged
  over the slices: m·old + (1 − m)·mean_g(stats_g)."""
  if groups == 1:
    return model.apply(variables, x, train=True, mutable=["batch_stats"])
  slices = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
  outputs, updated = jax.vmap(
      lambda xs: model.apply(variables, xs, train=True, mutable=["batch_stats"]))(slices)
  return (jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), outputs),
          jax.tree.map(lambda s: s.mean(axis=0), updated))


def compute_loss(params, batch_stats, batch, key, *, model, loss_config, momentum=None,
                 concat_views=True, bn_groups=1):
  """Contrastive loss on the global batch + online-probe cross-entropy on stop_gradient(h)
  (+ loss.kernel_l2·Σ‖W‖² over the kernels when set). (Representation metrics are not computed
  here: `batch_metrics` does it on log steps only.)

  SimCLR-style losses: both views go through the encoder as ONE batch [view1; view2] (BatchNorm
  statistics over 2B); concat_views=False: one view at a time (BatchNorm statistics per view, the
  running averages updated by view 1, then view 2 — as Keras does for two calls). MoCo: queries
  from view1, keys from view2 through the momentum encoder (`momentum`: its params/batch_stats
  and the queue), with shuffle-BN (He et al. 2020): BatchNorm over `bn_groups` slices, the
  queries' in batch order, the keys' after a random permutation of the batch (undone after), so
  a query and its positive key never share BatchNorm statistics.
  Returns (total, (metrics, new_batch_stats, (new_key_batch_stats, keys) or None)).
  """
  n = batch["view1"].shape[0]
  variables = {"params": params, "batch_stats": batch_stats}
  moco_out = None
  if loss_config.name == "moco":
    (_, z, probe_logits), updated = grouped_apply(model, variables, batch["view1"], bn_groups)
    shuffle = jax.random.permutation(jax.random.fold_in(key, 0x5B), n)
    (_, shuffled_keys, _), key_updated = grouped_apply(
        model, {"params": momentum["params"], "batch_stats": momentum["batch_stats"]},
        batch["view2"][shuffle], bn_groups)
    keys = jnp.zeros_like(shuffled_keys).at[shuffle].set(shuffled_keys)  # un-shuffle
    keys = losses.l2_normalize(jax.lax.stop_gradient(keys))
    contrastive = losses.moco_infonce(z, keys, momentum["queue"], loss_config.temperature,
                                      **losses.ifm_kwargs(loss_config))
    metrics = {"loss": contrastive}
    probe_labels = {name: batch[name] for name in probe_logits}
    moco_out = (key_updated["batch_stats"], keys)
  else:
    if concat_views:
      x = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
      (_, z, probe_logits), updated = model.apply(variables, x, train=True,
                                                  mutable=["batch_stats"])
      z1, z2 = z[:n], z[n:]
    else:
      (_, z1, logits1), updated = model.apply(variables, batch["view1"], train=True,
                                              mutable=["batch_stats"])
      (_, z2, logits2), updated = model.apply({"params": params, **updated}, batch["view2"],
                                              train=True, mutable=["batch_stats"])
      probe_logits = {k: jnp.concatenate([logits1[k], logits2[k]]) for k in logits1}
    contrastive = losses.CONTRASTIVE_LOSSES[loss_config.name](z1, z2, batch, key, loss_config)
    metrics = {"loss": contrastive}
    probe_labels = {name: jnp.concatenate([batch[name]] * 2) for name in probe_logits}
  total = contrastive
  for name, logits in probe_logits.items():
    labels = probe_labels[name]
    probe_loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    metrics[f"probe_loss/{name}"] = probe_loss
    metrics[f"probe_accuracy/{name}"] = jnp.mean(jnp.argmax(logits, -1) == labels)
    total = total + probe_loss
  if loss_config.kernel_l2:
    penalty = loss_config.kernel_l2 * optim.kernel_l2_penalty(params)
    metrics["kernel_l2"] = penalty
    total = total + penalty
  return total, (metrics, updated["batch_stats"], moco_out)


def batch_metrics(state: TrainState, batch, *, model) -> dict:
  """Wang & Isola alignment/uniformity and the effective rank of the head outputs of the batch's
  two views (BatchNorm in training mode, its updates discarded). Called on log steps only: the
  effective rank needs an SVD, which cost ~40% of the train step when done every step."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  x = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
  (_, z, _), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  n = batch["view1"].shape[0]
  return evaluate.representation_metrics(z[:n], z[n:])


def moco_bn_groups(config, mesh) -> int:
  """MoCo's shuffle-BN groups: loss.bn_groups, or (0) one per device and at least 2."""
  if config.loss.name != "moco":
    return 1
  return config.loss.bn_groups or max(2, mesh.devices.size)


def momentum_update(key_params, params, m: float):
  """EMA of the key encoder (MoCo): θ_k ← m·θ_k + (1 − m)·θ_q."""
  return jax.tree.map(lambda k, q: m * k + (1.0 - m) * q, key_params, params)


def enqueue(queue: jax.Array, queue_ptr: jax.Array, keys: jax.Array):
  """FIFO: overwrite the oldest len(keys) rows (ring buffer; K must be a multiple of the global
  batch) → (queue, new pointer)."""
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (queue_ptr, 0))
  return queue, (queue_ptr + keys.shape[0]) % queue.shape[0]


def traced_hyperparameters(config: ml_collections.ConfigDict) -> dict:
  """The values the train step takes as (traced) arguments rather than compile-time constants —
  the seed's PRNG key and loss.temperature — so that a sweep over seeds and temperatures
  compiles one step program per shape (and the persistent compilation cache can serve it)."""
  return {"base_key": jax.random.PRNGKey(config.seed),
          "temperature": jnp.float32(config.loss.temperature)}


def train_step(state: TrainState, batch, hyper: dict, *, model, loss_config, schedule,
               concat_views=True, bn_groups=1):
  """One optimizer step. `hyper` = `traced_hyperparameters(config)`. The step's PRNG key is
  fold_in(base_key, step): resumable. MoCo: the key encoder is first moved towards the current
  query encoder (as in MoCo's forward pass), then its keys of this batch are enqueued."""
  key = jax.random.fold_in(hyper["base_key"], state.step)
  loss_config = ml_collections.ConfigDict(
      {**loss_config.to_dict(), "temperature": hyper["temperature"]}, type_safe=False)
  momentum = state.momentum
  if momentum is not None:
    momentum = {**momentum, "params": momentum_update(momentum["params"], state.params,
                                                      loss_config.momentum)}
  grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
  (total, (metrics, batch_stats, moco_out)), grads = grad_fn(
      state.params, state.batch_stats, batch, key, model=model, loss_config=loss_config,
      momentum=momentum, concat_views=concat_views, bn_groups=bn_groups)
  metrics["finite"] = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(grads))
  if momentum is not None:
    key_batch_stats, keys = moco_out
    queue, queue_ptr = enqueue(momentum["queue"], momentum["queue_ptr"], keys)
    momentum = {**momentum, "batch_stats": key_batch_stats, "queue": queue,
                "queue_ptr": queue_ptr}
  metrics["learning_rate"] = schedule(state.step)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats,
                               momentum=momentum), metrics


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
  the latest checkpoint), then write and return the linear evaluation (workdir/eval.json).

  Raises `validate.ConfigError` / `sources.DataError` before compiling for bad input,
  `hosts.Preempted` after saving on SIGTERM, `NonFiniteError` when the loss diverges.
  """
  # ---- Checks, data and step counts (before anything compiles).
  mesh = create_mesh(devices)
  validate.check_config(config, mesh.devices.size, jax.process_count())
  workdir = paths.workdir_path(workdir)
  validate.check_workdir(workdir)
  train_split = sources.load(config.data, "train")
  test_split = sources.load(config.data, "test")
  batch_size = config.train.batch_size
  per_epoch = pipeline.steps_per_epoch(len(train_split), batch_size)
  if per_epoch == 0:
    raise validate.ConfigError(f"train.batch_size={batch_size} is larger than the training set "
                               f"({len(train_split)} examples of '{config.data.dataset}').")
  num_steps = config.train.num_steps if config.train.num_steps > 0 else (
      config.train.num_epochs * per_epoch)
  supervised = config.loss.get("supervised_label")
  if config.loss.name in ("supcon", "joint") and supervised not in train_split.num_classes:
    raise validate.ConfigError(f"loss.supervised_label={supervised!r} is not a label of "
                               f"'{config.data.dataset}': {', '.join(train_split.num_classes)}.")
  manager = checkpoint_manager(workdir, config)

  # ---- Input pipeline, model, optimizer, state (restored when the workdir has a checkpoint).
  start_step = manager.latest_step() or 0
  train_ds = pipeline.train_dataset(
      train_split, config.data, seed=config.seed, batch_size=batch_size, start_step=start_step,
      num_steps=num_steps, rows=pipeline.local_rows(mesh, batch_size))
  model = models.create_model(config.model, pipeline.label_classes(train_split, config.data))
  schedule = optim.learning_rate_schedule(config.optim, batch_size, num_steps, per_epoch)
  tx = optim.create_optimizer(config.optim, schedule)
  input_shape = (1, *train_ds.element_spec["view1"].shape[1:])
  queue_size = config.loss.queue_size if config.loss.name == "moco" else 0
  state = create_train_state(model, tx, input_shape, config.seed, mesh, queue_size=queue_size)
  if start_step:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = manager.restore(start_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    logging.info("Resumed from checkpoint at step %d.", start_step)

  # ---- Jitted step, writers, progress.
  step_fn = jax.jit(functools.partial(train_step, model=model, loss_config=config.loss,
                                      schedule=schedule, concat_views=config.train.concat_views,
                                      bn_groups=moco_bn_groups(config, mesh)),
                    donate_argnums=(0,))
  hyper = traced_hyperparameters(config)
  metrics_fn = jax.jit(functools.partial(batch_metrics, model=model))
  writer = metric_writers.create_default_writer(os.fspath(workdir),
                                                just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(flax.traverse_util.flatten_dict(config.to_dict(), sep="."))
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                             every_steps=config.train.log_every_steps)
  batches = pipeline.global_batches(train_ds, mesh)

  # Learn-then-unlearn curve: linear probes every eval.every_steps, kept in workdir/curve.json
  # (entries after the resumed step are recomputed, so a resumed run gives the same curve).
  curve_path = workdir / "curve.json"
  curve = []
  if start_step and curve_path.exists():
    curve = [point for point in paths.read_json(curve_path) if point["step"] <= start_step]

  def probe_curve(step, state):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    accuracies = evaluate.linear_eval(model, variables, train_split, test_split, config, mesh)
    curve.append({"step": step, **accuracies})
    writer.write_scalars(step, {f"probe_curve/{k}": v for k, v in accuracies.items()})
    if jax.process_index() == 0:
      paths.write_json(curve_path, curve)

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
        if config.eval.every_steps and step % config.eval.every_steps == 0:
          probe_curve(step, state)
        preempted = preemption.reached(step, manager)
        if preempted or step % config.train.checkpoint_every_steps == 0 or step == num_steps:
          save(step, state, finite)
        if preempted:
          raise hosts.Preempted(step, manager.directory)
  finally:
    # Stop tf.data's threads now: left to the garbage collector, they held up the next run of a
    # sweep by ~10 s.
    batches.close()
    manager.wait_until_finished()
    manager.close()
    writer.flush()

  # ---- Evaluate (every process computes; process 0 writes).
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  train_features, test_features = evaluate.extract_train_and_test(
      model, variables, train_split, test_split, config, mesh)
  linear = evaluate.probe_all_labels(train_features, test_features, config.eval)
  knn = evaluate.knn_accuracies(train_features, test_features, config.eval)
  online = evaluate.online_probe_accuracy(test_features)
  representation = evaluate.test_representation_metrics(model, variables, test_split, config,
                                                        mesh)
  writer.write_scalars(num_steps, {**{f"linear_eval/{k}": v for k, v in linear.items()},
                                   **{f"online_probe/{k}": v for k, v in online.items()},
                                   **{f"knn/{k}": v for k, v in knn.items()},
                                   **{f"test_metrics/{k}": v for k, v in representation.items()}})
  writer.flush()
  result = {"step": num_steps, "linear_eval": linear, "online_probe": online, "knn": knn,
            "metrics": representation}
  if curve:
    result["curve"] = curve
  if config.eval.get("kmeans_clusters"):
    local_features.save_kmeans_pngs(model, variables, test_split, config, workdir,
                                    config.eval.kmeans_clusters)
  sample = evaluate.host_sample(test_features, embeddings.MAX_POINTS, seed=config.seed)
  if jax.process_index() == 0:
    if curve:
      curves.plot_curves({workdir.name: [curve]}, workdir / "curve.png")
    embeddings.plot_embeddings(*sample, workdir / "embeddings.png", seed=config.seed,
                               title=f"{workdir.name}: test features h at step {num_steps}")
    paths.write_json(workdir / "eval.json", result)
  logging.info("Test accuracy at step %d (linear eval | online probe | %d-NN):\n%s", num_steps,
               config.eval.knn_k, "\n".join(
                   f"  {k:<14} {v:.4f}" + (f" | {online[k]:.4f} | {knn[k]:.4f}" if k in online
                                           else "") for k, v in linear.items()))
  return result
