"""A finished (or running) run as a Python object, and its evaluation on any dataset.

  import cl_jax
  run = cl_jax.load("runs/randbit")                  # newest checkpoint + its config; gs:// works
  h = run.encode(images)                             # numpy [N, D]: the encoder output h
  z = run.encode(images, features="embedding")       # the normalised head output z/‖z‖
  run.config, run.step

`encode` preprocesses as evaluation does (resize to the trained `data.image_size` with the
sources' bilinear antialiased filter, channels converted, /255) and runs the evaluators' own jitted
encoder (`evaluate.encode_runs`), data parallel over the local devices. A run trained with random
bits expects their planes: `bits=None` gives all-zero planes, an int array [N] the bit integers
to draw, "train" / "test" the run's own bits of that split (what its evaluators see).

`evaluate_checkpoint(config, workdir)` (`cl_jax.main --mode=evaluate`) runs `config.evals` on the
newest checkpoint without training, on `config.data` — the training's data or another dataset (a
transfer probe) — and writes `workdir/eval_<data.dataset>.json`; eval.json is never touched.
"""
import dataclasses
import functools
import json
import os
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers
from jax.sharding import NamedSharding, PartitionSpec

from cl_jax import evaluate, evaluators, models, paths, spec, train, validate
from cl_jax.data import features as data_features
from cl_jax.data import own_data, pipeline, sources, views

# The config sections an evaluation of a trained run may change (the rest defines the encoder).
EVALUATION_SECTIONS = ("data.", "eval.", "evals.")


def _restore(workdir, step: Optional[int], mesh):
  """(step, config dict, {"params", "batch_stats"}) of the checkpoint at `step` (None: newest),
  replicated on `mesh`; a `spec.ConfigError` when the workdir has no checkpoint."""
  directory = paths.workdir_path(workdir) / "checkpoints"
  if not directory.exists():
    raise spec.ConfigError(f"{workdir} holds no checkpoint ({directory} does not exist): train a "
                           "run there first (python -m cl_jax.main --config=... --workdir=...).")
  manager = ocp.CheckpointManager(directory, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    at = "" if step is None else f" at step {step}"
    raise spec.ConfigError(f"{workdir} holds no checkpoint{at} (steps saved: "
                           f"{list(manager.all_steps()) or 'none'}).")
  config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  metadata = manager.item_metadata(step)["state"]
  replicated = NamedSharding(mesh, PartitionSpec())
  wanted = {k: metadata[k] for k in ("params", "batch_stats")}
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
                        wanted)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)))["state"]
  manager.close()
  return step, config, {k: restored[k] for k in ("params", "batch_stats")}


def _input_channels(model, variables, image_size: int, num_bits: int) -> int:
  """The image channels C (1 or 3) the checkpoint's encoder was built for: the one whose
  initialisation gives the checkpoint's parameter shapes."""
  want = jax.tree.map(lambda x: x.shape, variables["params"])
  for channels in (1, 3):
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                            jnp.zeros((1, image_size, image_size, channels + num_bits)))
    if jax.tree.map(lambda x: x.shape, shapes["params"]) == want:
      return channels
  raise spec.ConfigError("The checkpoint's parameters match no 1- or 3-channel input of its "
                         "config's model: was it written by another version of cl_jax?")


@dataclasses.dataclass
class Run:
  """A trained run: `config` (ml_collections), `step`, the model and its variables (replicated on
  the local devices), and `channels`, the image channels its encoder takes (bit planes apart)."""
  config: ml_collections.ConfigDict
  step: int
  workdir: Any
  model: Any
  variables: Any
  channels: int
  mesh: Any

  @property
  def num_bits(self) -> int:
    return self.config.data.random_bits

  def preprocess(self, images) -> np.ndarray:
    """uint8 [N, S, S, C] as the evaluators read: `images` (uint8, or float in [0, 1]; [N, H, W]
    or [N, H, W, C], any size) resized to the trained size, channels converted."""
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
      raise spec.ConfigError(f"encode() takes images [N, H, W] or [N, H, W, C] with C = 1, 3 or "
                             f"4; got shape {images.shape}.")
    if np.issubdtype(images.dtype, np.floating):
      images = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    elif images.dtype != np.uint8:
      raise spec.ConfigError(f"encode() takes uint8 or float images in [0, 1]; got {images.dtype}.")
    return own_data.to_channels(sources.resize(images, self.config.data.image_size),
                                self.channels)

  def encode(self, images, features: str = "encoder", bits: Union[None, str, np.ndarray] = None,
             batch_size: Optional[int] = None) -> np.ndarray:
    """numpy [N, D] features of `images` (module docstring): `features` "encoder" (h, as the
    linear evaluation sees it) or "embedding" (z/‖z‖)."""
    spec.check_value("features", features, spec.one_of("encoder", "embedding"))
    x = self.preprocess(images)
    n = len(x)
    bit_integers = self._bit_integers(bits, n)
    devices = self.mesh.devices.size
    batch_size = spec.round_up(batch_size or self.config.eval.batch_size, devices)
    batch_size = min(batch_size, spec.round_up(max(n, 1), devices))
    variables = jax.tree.map(lambda a: a[None], self.variables)  # a group of one run
    sharding = pipeline.run_batch_sharding(self.mesh)
    out = []
    for start in range(0, n, batch_size):
      rows = np.arange(start, start + batch_size)
      rows = np.minimum(rows, n - 1)  # the last batch padded with the last image
      image = jax.device_put(
          (x[rows].astype(np.float32) / 255.0)[None], sharding)
      ints = jax.device_put(bit_integers[rows][None], sharding)
      h, z, _ = evaluate.encode_runs(variables, _with_bits(image, ints, self.num_bits),
                                     model=self.model)
      out.append(np.asarray((h if features == "encoder" else z)[0])[:min(batch_size, n - start)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def _bit_integers(self, bits, n: int) -> np.ndarray:
    if bits is None:
      return np.zeros(n, np.int32)
    if isinstance(bits, str):
      spec.check_value("bits", bits, spec.one_of("train", "test"))
      return data_features.random_bit_integers(n, self.num_bits, self.config.seed, bits)
    bits = np.asarray(bits)
    if bits.shape != (n,) or not np.issubdtype(bits.dtype, np.integer):
      raise spec.ConfigError(f"encode(bits=...) takes an integer array [N] = [{n}] of bit "
                             f"integers, 'train', 'test' or None; got {bits.dtype} {bits.shape}.")
    return bits.astype(np.int32)


@functools.partial(jax.jit, static_argnames="num_bits")
def _with_bits(image, bit_integers, num_bits: int):
  """Images [R, B, H, W, C] with the planes of their bit integers [R, B] appended (as
  `pipeline.EvalBatches` appends them)."""
  return jax.vmap(lambda x, b: views.append_bit_planes(x, b, num_bits))(image, bit_integers)


def load(workdir, step: Optional[int] = None, devices=None) -> Run:
  """The run in `workdir` (a local folder or a bucket) at its newest checkpoint (or `step`), on
  `devices` (default: this process's devices)."""
  mesh = train.create_mesh(jax.local_devices() if devices is None else devices)
  step, saved, variables = _restore(workdir, step, mesh)
  config = ml_collections.ConfigDict(saved)
  probes = {k[len("probe_"):]: v["kernel"].shape[-1] for k, v in variables["params"].items()
            if k.startswith("probe_")}
  model = models.create_model(config.model, probes, predictor="predictor" in variables["params"])
  channels = _input_channels(model, variables, config.data.image_size, config.data.random_bits)
  return Run(config=config, step=step, workdir=workdir, model=model, variables=variables,
             channels=channels, mesh=mesh)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir, devices=None) -> dict:
  """Run the at-end evaluators of `config.evals` on the newest checkpoint in `workdir` on the data
  of `config.data` (module docstring); write and return workdir/eval_<data.dataset>.json. Every
  check runs before anything compiles: only the data and evaluator sections may differ from the
  checkpoint's config, the images are resized to the trained size, and a channel count the
  encoder cannot take is refused."""
  mesh = train.create_mesh(devices)
  run = load(workdir, devices=mesh.devices.reshape(-1).tolist())
  saved = run.config.to_dict()
  config = config.copy_and_resolve_references()
  refused = train.config_differences(saved, json.loads(config.to_json()),
                                     EVALUATION_SECTIONS)
  if refused:
    raise spec.ConfigError(
        f"--mode=evaluate runs the checkpoint in {workdir} as it was trained: only the data "
        f"(data.*) and the evaluators (eval.*, evals.*) may differ from its config. These differ: "
        + "; ".join(refused) + ". Use the checkpoint's settings for them.")
  if config.data.random_bits != run.num_bits:
    raise spec.ConfigError(
        f"data.random_bits={config.data.random_bits}, but the encoder in {workdir} was trained "
        f"with {run.num_bits} bit planes: its input takes {run.channels} + {run.num_bits} "
        f"channels. Set data.random_bits={run.num_bits}.")
  if config.data.image_size != run.config.data.image_size:
    logging.info("Evaluating at the trained size: data.image_size %d -> %d.",
                 config.data.image_size, run.config.data.image_size)
    config.data.image_size = run.config.data.image_size
  validate.check_config(config, num_devices=1)  # the train batch is not used here
  train_split, test_split = sources.load(config.data, "train"), sources.load(config.data, "test")
  channels = pipeline.image_channels(train_split, config.data)
  if channels != run.channels:
    raise spec.ConfigError(
        f"data.dataset={config.data.dataset!r} gives {channels}-channel images, but the encoder "
        f"in {workdir} takes {run.channels}-channel images: set data.channels={run.channels} to "
        "convert them (grey is repeated to RGB; RGB becomes grey by its luma).")
  name = f"eval_{config.data.dataset}"
  out = paths.workdir_path(workdir)
  at_end = ml_collections.ConfigDict({k: {**cfg.to_dict(), "every_steps": 0}
                                      for k, cfg in config.evals.items()
                                      if cfg.get("at_end", True)})
  evaluations = evaluators.Evaluations(at_end, out / name, start_step=0)
  writer = metric_writers.create_default_writer(
      os.fspath(out / name), just_logging=jax.process_index() > 0)
  context = lambda: evaluators.Context(
      model=run.model, variables=run.variables, train_split=train_split, test_split=test_split,
      config=config, mesh=run.mesh, workdir=out / name, step=run.step)
  logging.info("Evaluating step %d of %s on '%s' (%d train / %d test images).", run.step,
               workdir, config.data.dataset, len(train_split), len(test_split))
  evaluations.run(run.step, True, context, writer)
  writer.close()
  result = {"step": run.step, "dataset": config.data.dataset, **evaluations.results()}
  if jax.process_index() == 0:
    paths.write_json(out / f"{name}.json", result)
  evaluations.log_summary(run.step)
  return result
