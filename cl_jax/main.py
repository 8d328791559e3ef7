"""Entry point, intentionally kept short:

  python -m cl_jax.main --config=configs/<name>.py[:variant] --workdir=DIR [--config.x.y=value ...]
  python -m cl_jax.main ... --workdir=DIR --mode=evaluate [--config.data.dataset=OTHER ...]

--mode=evaluate trains nothing: it runs the config's evaluators on DIR's newest checkpoint, on
config.data (another dataset: a transfer probe), and writes DIR/eval_<data.dataset>.json.

Exit status: 0 done (DIR/eval.json written); 1 bad input or a diverged run (one paragraph on
stderr); 75 preempted (SIGTERM) after saving a checkpoint — rerun the same command to resume.
"""
from absl import flags
from ml_collections import config_flags

from cl_jax import cli, run, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and "
                               "eval.json: a local path or a bucket (gs://bucket/run). Rerunning "
                               "with the same workdir resumes.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process job with "
                                 "jax.distributed.initialize() (Cloud TPU pods, SLURM: detected; "
                                 "else JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID "
                                 "as launch/local_cluster.py sets them).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"],
                          "train: train (resuming from --workdir) and evaluate; evaluate: run the "
                          "config's evaluators on the newest checkpoint in --workdir without "
                          "training, on config.data (may be another dataset), writing "
                          "WORKDIR/eval_<data.dataset>.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.setup(_CONFIG.value.train.batch_size, _DISTRIBUTED.value)
  if _MODE.value == "evaluate":
    run.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
  else:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
