"""Entry point: python -m cl_jax.main --config=configs/<name>.py[:variant] --workdir=DIR
[--config.section.field=value ...].

Exit status: 0 done (DIR/eval.json written); 1 bad input or a diverged run (one paragraph on
stderr); 75 preempted (SIGTERM) after saving a checkpoint — rerun the same command to resume.
"""
import os
import sys

from cl_jax import data  # noqa: F401  (imports TensorFlow quietly, before anything else does)
import tensorflow as tf  # noqa: E402
import jax  # noqa: E402
from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cl_jax import cli, hosts, train, validate  # noqa: E402
from cl_jax.data import sources  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and "
                               "eval.json: a local path or a bucket (gs://bucket/run). Rerunning "
                               "with the same workdir resumes.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process job with "
                                 "jax.distributed.initialize() (Cloud TPU pods, SLURM: detected; "
                                 "else JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID "
                                 "as launch/local_cluster.py sets them).")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later


def main(argv):
  del argv
  train.quiet_library_logs()
  tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerator memory for JAX.
  if _DISTRIBUTED.value or "JAX_NUM_PROCESSES" in os.environ:
    hosts.initialize_distributed()
  else:  # on CPU: one device per core (no effect on GPU/TPU)
    hosts.use_cpu_cores(_CONFIG.value.train.batch_size)
  logging.info("JAX %s: process %d of %d, %d device(s) in all (%s)", jax.__version__,
               jax.process_index(), jax.process_count(), jax.device_count(),
               jax.devices()[0].platform)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (validate.ConfigError, sources.DataError, train.NonFiniteError) as e:
    sys.exit(f"error: {e}")
  except hosts.Preempted as e:
    logging.warning("%s", e)
    sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
  cli.run(main)
