"""Entry point: python -m cl_jax.main --config=configs/<name>.py[:variant] --workdir=DIR
[--config.section.field=value ...]."""
import sys

import jax
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from cl_jax import train, validate
from cl_jax.data import sources

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and "
                               "eval.json. Rerunning with the same workdir resumes.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() "
                                 "(multi-host Cloud TPU pods / GPU clusters).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  train.quiet_library_logs()
  tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerator memory for JAX.
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX %s: %d process(es), devices %s", jax.__version__, jax.process_count(),
               jax.devices())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (validate.ConfigError, sources.DataError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
