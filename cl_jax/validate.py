"""Config checks that run before anything is loaded or compiled.

Each choice declares the fields it reads (`objectives.FIELDS`, `models.ENCODER_FIELDS`,
`optim.OPTIMIZER_FIELDS`, `features.SCENES`, `evaluators.EVALUATORS`); `check_config` loops
over them (`spec.check_choice`) and adds the rules that relate fields to each other or to the
devices. Each failure is a `ConfigError` whose message names the field, the value and what is valid.
"""
import ml_collections

from cl_jax import evaluators, models, objectives, optim, paths, spec
from cl_jax.data import features
from cl_jax.spec import ConfigError  # noqa: F401  (the one ConfigError, re-exported)


def check_config(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1):
  """Raise `ConfigError` for the first problem found in `config`."""
  data, model, loss, train = config.data, config.model, config.loss, config.train
  spec.check_choice(model, "model", "encoder", models.ENCODER_FIELDS)
  spec.check_choice(loss, "loss", "name", objectives.FIELDS, objectives.CONFIG_FILES)
  spec.check_choice(config.optim, "optim", "name", optim.OPTIMIZER_FIELDS)
  spec.check_choice(data, "data", "scene", features.scene_fields(),
                    features.scene_config_files())
  evaluators.check(config.evals)
  for prefix, fields in [("model", models.FIELDS), ("optim", optim.FIELDS),
                         ("loss", COMMON_LOSS_FIELDS), ("train", TRAIN_FIELDS),
                         ("eval", EVAL_FIELDS)]:
    section = config[prefix]
    for name, field in fields.items():
      spec.check_value(f"{prefix}.{name}", section[name], field)
  spec.check_value("data.random_bits", data.random_bits, spec.in_range(
      0, features.MAX_RANDOM_BITS), " (one constant input channel per bit)")
  spec.check_value("data.channels", data.channels, spec.Field(
      "is not one of: 0 (the images' own: 1 for grey data, 3 for colour), 1 (grey), 3 (RGB)",
      lambda v: v in (0, 1, 3)))
  spec.check_value("data.crop_area_min", data.crop_area_min, spec.Field(
      "must be in (0, 1]", lambda v: 0 < v <= 1))
  min_size = models.create_encoder(model).min_image_size
  if data.image_size < min_size:
    raise ConfigError(f"data.image_size={data.image_size} is too small for model.encoder="
                      f"'{model.encoder}', which needs images of at least {min_size} px.")
  features.SCENES[data.scene].check_sizes(data)
  if data.streaming:
    from cl_jax.data import sources  # pylint: disable=g-import-not-at-top
    if data.dataset in sources.LOCAL:
      raise ConfigError(f"data.streaming=True reads a tfds dataset by index; data.dataset="
                        f"'{data.dataset}' is a local source that is always held in memory: "
                        "set data.streaming=False, or name a tfds dataset (e.g. imagenet2012).")
    if not features.SCENES[data.scene].streams:
      streaming = [name for name, scene in features.SCENES.items() if scene.streams]
      raise ConfigError(f"data.scene='{data.scene}' reads the in-memory split (its digits) "
                        "and cannot stream: with data.streaming=True use data.scene="
                        f"{' or '.join(map(repr, streaming))}, or set data.streaming=False.")
  if data.class_subset and not paths.workdir_path(data.class_subset).exists():
    raise ConfigError(f"data.class_subset={data.class_subset!r} does not exist: it must be a file "
                      "of class names, one per line (e.g. configs/imagenet100_classes.txt).")
  if loss.name in objectives.WITH_PREDICTOR:
    for name, field in models.PREDICTOR_FIELDS.items():
      if name not in model:
        raise ConfigError(f"loss.name={loss.name!r} needs model.{name} (the predictor's width); "
                          "start from configs/ssl_methods.py, which defines it.")
      spec.check_value(f"model.{name}", model[name], field)
  if train.batch_size < objectives.MIN_BATCH.get(loss.name, 0):
    raise ConfigError(f"train.batch_size={train.batch_size} is too small for loss.name="
                      f"{loss.name!r}: its loss is built from the global batch's per-dimension "
                      f"statistics (means, variances, correlations), meaningless on fewer than "
                      f"{objectives.MIN_BATCH[loss.name]} examples; use train.batch_size >= "
                      f"{objectives.MIN_BATCH[loss.name]}.")
  if loss.name == "moco":
    if not train.concat_views:
      raise ConfigError("train.concat_views=False has no effect with loss.name='moco' (queries "
                        "and keys are separate forward passes): set train.concat_views=True.")
    groups = objectives.moco_bn_groups(loss, num_devices)
    if train.batch_size % groups:
      raise ConfigError(f"loss.bn_groups={loss.bn_groups} gives {groups} shuffle-BN groups, "
                        f"which must divide train.batch_size={train.batch_size} (0 = one per "
                        "device, at least 2).")
    if loss.queue_size % train.batch_size:
      raise ConfigError(f"loss.queue_size={loss.queue_size} must be a positive multiple of "
                        f"train.batch_size={train.batch_size} (whole batches are enqueued).")
  if train.batch_size % num_devices:
    raise ConfigError(f"train.batch_size={train.batch_size} (the global batch) must be divisible "
                      f"by the number of devices, {num_devices}; e.g. "
                      f"{spec.round_up(train.batch_size, num_devices)}.")
  if train.batch_size % num_processes:
    raise ConfigError(f"train.batch_size={train.batch_size} must be divisible by the number of "
                      f"processes, {num_processes}.")
  if train.num_steps <= 0 and train.num_epochs <= 0:
    raise ConfigError("Set train.num_steps > 0 or train.num_epochs > 0 (steps win when > 0).")


# Fields every loss, the loop and evaluation read.
COMMON_LOSS_FIELDS = {"temperature": spec.positive(), "kernel_l2": spec.at_least(0)}
TRAIN_FIELDS = {"batch_size": spec.positive(), "log_every_steps": spec.positive(),
                "checkpoint_every_steps": spec.positive(), "concat_views": spec.Field()}
EVAL_FIELDS = {"batch_size": spec.positive()}


def check_data(config: ml_collections.ConfigDict, num_examples: int, num_classes: dict):
  """Checks that need the loaded training split: its size and its labels."""
  if config.train.batch_size > num_examples:
    raise ConfigError(f"train.batch_size={config.train.batch_size} is larger than the training "
                      f"set ({num_examples} examples of '{config.data.dataset}').")
  if "supervised_label" in objectives.FIELDS[config.loss.name]:
    label = config.loss.supervised_label
    if label not in num_classes:
      raise ConfigError(f"loss.supervised_label={label!r} is not a label of "
                        f"'{config.data.dataset}': {', '.join(num_classes)}.")


def check_workdir(workdir):
  """Raise `ConfigError` unless `workdir` (an epath.Path) can be created and written to."""
  try:
    paths.check_writable(workdir)
  except Exception as e:  # pylint: disable=broad-except  (OSError, tf/gcs errors, ...)
    raise ConfigError(
        f"--workdir={workdir} cannot be written to ({type(e).__name__}: {e}). Checkpoints, "
        "eval.json and TensorBoard files go there: pass a folder you can write to, or a bucket "
        "(gs://...) this machine has write access to.") from None
