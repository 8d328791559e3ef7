"""Config checks that run before anything is loaded or compiled.

Each failure is a `ConfigError` whose message names the field, the value and the valid choices.
"""
import ml_collections

from cl_jax import losses, models, optim, paths
from cl_jax.data import features


class ConfigError(ValueError):
  """An invalid experiment config."""


def _choice(field: str, value, choices):
  if value not in choices:
    raise ConfigError(f"{field}={value!r} is not one of: {', '.join(map(str, choices))}.")


def _positive(field: str, value):
  if not value > 0:
    raise ConfigError(f"{field}={value!r} must be > 0.")


def check_config(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1):
  """Raise `ConfigError` for the first problem found in `config`."""
  data, model, train = config.data, config.model, config.train
  _choice("model.encoder", model.encoder, sorted(models.ENCODERS))
  _choice("loss.name", config.loss.name, sorted([*losses.CONTRASTIVE_LOSSES, "moco"]))
  _choice("optim.name", config.optim.name, optim.OPTIMIZERS)
  _choice("optim.schedule", config.optim.schedule, optim.SCHEDULES)
  _choice("optim.lr_scaling", config.optim.lr_scaling, optim.LR_SCALINGS)
  if not 0 <= data.random_bits <= features.MAX_RANDOM_BITS:
    raise ConfigError(f"data.random_bits={data.random_bits} must be in [0, "
                      f"{features.MAX_RANDOM_BITS}] (one constant input channel per bit).")
  _choice("model.conv_padding", model.conv_padding, ("SAME", "VALID"))
  _choice("model.dtype", model.dtype, sorted(models.DTYPES))
  if not 0 <= model.bn_momentum < 1:
    raise ConfigError(f"model.bn_momentum={model.bn_momentum} must be in [0, 1) (the weight of "
                      "the old running statistics: 0.9 flax/PyTorch convention, 0.99 Keras).")
  _positive("model.bn_epsilon", model.bn_epsilon)
  if config.loss.kernel_l2 < 0:
    raise ConfigError(f"loss.kernel_l2={config.loss.kernel_l2} must be >= 0.")
  min_size = models.create_encoder(model).min_image_size
  if data.image_size < min_size:
    raise ConfigError(f"data.image_size={data.image_size} is too small for model.encoder="
                      f"'{model.encoder}', which needs images of at least {min_size} px.")
  _check_scene(data)
  if data.get("streaming"):
    from cl_jax.data import sources  # pylint: disable=g-import-not-at-top
    if data.dataset in (sources.EMBEDDED, sources.PHOTOS, sources.IDX):
      raise ConfigError(f"data.streaming=True reads a tfds dataset by index; data.dataset="
                        f"'{data.dataset}' is a small local source that is always held in memory: "
                        "set data.streaming=False, or name a tfds dataset (e.g. imagenet2012).")
    if data.get("scene", "none") not in ("none", "digits_on_images"):
      raise ConfigError(f"data.scene='{data.scene}' composes digits from an in-memory digit "
                        "split and cannot stream: with data.streaming=True use data.scene="
                        "'none' or 'digits_on_images', or set data.streaming=False.")
  if data.get("class_subset") and not paths.workdir_path(data.class_subset).exists():
    raise ConfigError(f"data.class_subset={data.class_subset!r} does not exist: it must be a file "
                      "of class names, one per line (e.g. configs/imagenet100_classes.txt).")
  if not 0 < data.crop_area_min <= 1:
    raise ConfigError(f"data.crop_area_min={data.crop_area_min} must be in (0, 1].")
  _positive("loss.temperature", config.loss.temperature)
  if config.loss.ifm_epsilon < 0:
    raise ConfigError(f"loss.ifm_epsilon={config.loss.ifm_epsilon} must be >= 0.")
  if config.loss.name in ("supcon", "joint"):
    missing = [f for f in ("supervised_label", "beta") if f not in config.loss]
    if missing:
      raise ConfigError(f"loss.name='{config.loss.name}' needs loss.{', loss.'.join(missing)}; "
                        "start from configs/supcon_joint.py, which defines them.")
    if not 0 <= config.loss.beta <= 1:
      raise ConfigError(f"loss.beta={config.loss.beta} must be in [0, 1].")
  if config.loss.name == "moco":
    missing = [f for f in ("momentum", "queue_size", "bn_groups") if f not in config.loss]
    if missing:
      raise ConfigError(f"loss.name='moco' needs loss.{', loss.'.join(missing)}; start from "
                        "configs/moco_ifm.py, which defines them.")
    if not 0 <= config.loss.momentum < 1:
      raise ConfigError(f"loss.momentum={config.loss.momentum} must be in [0, 1).")
    groups = config.loss.bn_groups or max(2, num_devices)
    if config.loss.bn_groups < 0 or train.batch_size % groups:
      raise ConfigError(f"loss.bn_groups={config.loss.bn_groups} gives {groups} shuffle-BN "
                        f"groups, which must divide train.batch_size={train.batch_size} (0 = one "
                        "per device, at least 2).")
    if config.loss.queue_size <= 0 or config.loss.queue_size % train.batch_size:
      raise ConfigError(f"loss.queue_size={config.loss.queue_size} must be a positive multiple "
                        f"of train.batch_size={train.batch_size} (whole batches are enqueued).")
  if config.loss.name == "generalized":
    missing = [f for f in ("lam", "prior", "hidden_norm", "scale") if f not in config.loss]
    if missing:
      raise ConfigError(f"loss.name='generalized' needs loss.{', loss.'.join(missing)}; start "
                        "from configs/generalized_losses.py, which defines them.")
    _choice("loss.prior", config.loss.prior, losses.PRIORS)
    if config.loss.lam < 0:
      raise ConfigError(f"loss.lam={config.loss.lam} must be >= 0.")
    _positive("loss.scale", config.loss.scale)
  _positive("optim.learning_rate", config.optim.learning_rate)
  _positive("model.head_layers", model.head_layers)
  _positive("model.embed_dim", model.embed_dim)
  _positive("train.batch_size", train.batch_size)
  if train.batch_size % num_devices:
    raise ConfigError(f"train.batch_size={train.batch_size} (the global batch) must be divisible "
                      f"by the number of devices, {num_devices}; e.g. "
                      f"{-(-train.batch_size // num_devices) * num_devices}.")
  if train.batch_size % num_processes:
    raise ConfigError(f"train.batch_size={train.batch_size} must be divisible by the number of "
                      f"processes, {num_processes}.")
  if train.num_steps <= 0 and train.num_epochs <= 0:
    raise ConfigError("Set train.num_steps > 0 or train.num_epochs > 0 (steps win when > 0).")
  _positive("train.log_every_steps", train.log_every_steps)
  _positive("train.checkpoint_every_steps", train.checkpoint_every_steps)
  if config.eval.every_steps < 0:
    raise ConfigError(f"eval.every_steps={config.eval.every_steps} must be >= 0 (0 = off).")
  if not config.eval.l2 >= 0:
    raise ConfigError(f"eval.l2={config.eval.l2!r} must be >= 0: it is the L2 penalty (l2/2)·‖W‖² "
                      "of the linear probe on standardised features (default 1e-3).")
  if not isinstance(config.eval.knn_k, int) or config.eval.knn_k <= 0:
    raise ConfigError(f"eval.knn_k={config.eval.knn_k!r} must be a positive number of neighbours "
                      "for the k-NN accuracy (default 200).")
  _positive("eval.knn_temperature", config.eval.knn_temperature)
  if not isinstance(config.eval.probe_steps, int) or config.eval.probe_steps <= 0:
    raise ConfigError(f"eval.probe_steps={config.eval.probe_steps!r} must be a positive number of "
                      "L-BFGS iterations for the linear probe (default 200); with 0 the probe "
                      "would report an untrained classifier.")
  _positive("eval.batch_size", config.eval.batch_size)


def check_workdir(workdir):
  """Raise `ConfigError` unless `workdir` (an epath.Path) can be created and written to."""
  try:
    paths.check_writable(workdir)
  except Exception as e:  # pylint: disable=broad-except  (OSError, tf/gcs errors, ...)
    raise ConfigError(
        f"--workdir={workdir} cannot be written to ({type(e).__name__}: {e}). Checkpoints, "
        "eval.json and TensorBoard files go there: pass a folder you can write to, or a bucket "
        "(gs://...) this machine has write access to.") from None


SCENE_CONFIGS = {"digits_on_images": "digits_on_images.py", "multidigits": "multidigit.py",
                 "digit_sizes": "digit_sizes.py", "backgrounds": "backgrounds.py"}
SCENE_FIELDS = {
    "digits_on_images": ("digit_dataset", "num_unique_digits", "digit_fraction"),
    "multidigits": ("digit_size", "num_digits", "eval_num_digits", "placement"),
    "digit_sizes": ("digit_size", "other_digit_size"),
    "backgrounds": ("digit_size", "num_backgrounds", "shared_background"),
}


def _check_scene(data):
  scene = data.get("scene", "none")
  _choice("data.scene", scene, features.SCENES)
  if scene == "none":
    return
  missing = [f for f in SCENE_FIELDS[scene] if f not in data]
  if missing:
    raise ConfigError(f"data.scene='{scene}' needs data.{', data.'.join(missing)}; start from "
                      f"configs/{SCENE_CONFIGS[scene]}, which defines them.")
  size = data.image_size
  if scene == "digits_on_images":
    _positive("data.num_unique_digits", data.num_unique_digits)
    if size < 8:
      raise ConfigError(f"data.image_size={size}: digits on images need at least 8 px.")
    side = features.digit_side(size, data.digit_fraction)
    if not 0 < data.digit_fraction <= 0.25 or side < 2:
      raise ConfigError(f"data.digit_fraction={data.digit_fraction} must be in (0, 0.25] (the 3×3 "
                        "grid of copies at 0.15/0.45/0.75 of the side fits up to 1/4) and give "
                        f"digits of at least 2 px on data.image_size={size} (got {side} px).")
  if scene == "multidigits":
    _choice("data.placement", data.placement, ("grid", "random"))
    cell = data.digit_size if data.placement == "grid" else (3 * data.digit_size) // 2
    fits = (size // cell) ** 2
    for field in ("num_digits", "eval_num_digits"):
      if not 1 <= data[field] <= fits:
        raise ConfigError(f"data.{field}={data[field]} must be in [1, {fits}]: that many "
                          f"{data.digit_size} px digits fit on a {size} px canvas with "
                          f"placement '{data.placement}'.")
  if scene == "digit_sizes":
    for field in ("digit_size", "other_digit_size"):
      if not 1 <= data[field] <= size // 2:
        raise ConfigError(f"data.{field}={data[field]} must be in [1, {size // 2}] (two digits "
                          f"side by side on a {size} px canvas).")
  if scene == "backgrounds":
    _positive("data.num_backgrounds", data.num_backgrounds)
    if not 1 <= data.digit_size <= size:
      raise ConfigError(f"data.digit_size={data.digit_size} must be in [1, {size}].")
