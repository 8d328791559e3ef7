"""The one process set-up of every entry point (cl_jax.main, the sweep, the theory simulator, the
benchmarks) and of the Colab notebook.

`setup(batch_size)`, before anything runs on a device:
- keeps library INFO chatter (Orbax's per-save lines, clu's echo of every scalar, JAX's search for
  a TPU backend) out of the log; warnings still show;
- hides accelerators from TensorFlow, which only runs tf.data (the GPU memory stays JAX's);
- joins a multi-process job with `jax.distributed.initialize()` when the environment says so
  (`distributed=True`, e.g. Cloud TPU pods and SLURM where it detects itself, or
  JAX_NUM_PROCESSES set, as launch/local_cluster.py does);
- otherwise, on a CPU, makes one JAX device per core (`hosts.use_cpu_cores`), and keeps XLA's
  compiled programs in a persistent cache (`use_compilation_cache`).

`run(main)`: `absl.app.run(main)` with the exit statuses every entry point shares:
0 done (also after a requested --help, where absl would exit 1); 1 bad input or a diverged run
(any `spec.UserError`: `ConfigError`, `DataError`, `NonFiniteError`, and a `--config.*` override
that names no field), as one paragraph "error: ..." on stderr, no traceback;
75 (EX_TEMPFAIL) preempted after saving a checkpoint — rerun the same command to resume.
"""
import logging as std_logging
import os
import sys
from typing import Optional

from absl import app, logging

HELP_FLAGS = ("--help", "--helpshort", "--helpfull", "-?")
EXIT_PREEMPTED = 75

_QUIET_LOGGERS = ("/orbax/", "/clu/", "/jax/_src/xla_bridge", "/etils/")


def quiet_library_logs():
  """Keep library INFO records out of the absl log; their warnings still show."""
  def keep(record) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in _QUIET_LOGGERS)
  logging.get_absl_handler().addFilter(keep)
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)


def hide_accelerators_from_tensorflow():
  """tf.data only: keep the accelerators' memory for JAX (no-op when TensorFlow is absent)."""
  try:
    from cl_jax import data  # noqa: F401  pylint: disable=g-import-not-at-top  (quiet TF import)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], "GPU")


def use_compilation_cache() -> Optional[str]:
  """Keep the compiled programs in JAX's persistent compilation cache, so that a rerun (the quick
  start again, a sweep's next run of a shape after a restart) loads them instead of compiling
  (timings: benchmarks/README.md). The folder
  is $XDG_CACHE_HOME/cl_jax/xla (default ~/.cache/cl_jax/xla); returns it, or None when left
  off: CL_JAX_COMPILATION_CACHE=0, or JAX_COMPILATION_CACHE_DIR already set (JAX then uses that
  folder itself). Only single-process jobs use it: processes sharing a host would write the
  same files."""
  if os.environ.get("CL_JAX_COMPILATION_CACHE") == "0" or os.environ.get(
      "JAX_COMPILATION_CACHE_DIR"):
    return None
  import jax  # pylint: disable=g-import-not-at-top
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  folder = os.path.join(root, "cl_jax", "xla")
  jax.config.update("jax_compilation_cache_dir", folder)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    # Every program, however quick to compile: a run's many small ones (its first checkpoint's,
    # log steps', evaluations') add up to a noticeable part of a warm quick start.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  return folder


def setup(batch_size: Optional[int] = None, distributed: bool = False):
  """Set up this process (see the module docstring). `batch_size`: the global batch, which the
  CPU device count must divide (None: leave the CPU as one device)."""
  from cl_jax import hosts  # pylint: disable=g-import-not-at-top
  quiet_library_logs()
  hide_accelerators_from_tensorflow()
  if distributed or "JAX_NUM_PROCESSES" in os.environ:
    hosts.initialize_distributed()
  else:
    if batch_size:
      hosts.use_cpu_cores(batch_size)
    use_compilation_cache()
  import jax  # pylint: disable=g-import-not-at-top
  logging.info("JAX %s: process %d of %d, %d device(s) in all (%s)", jax.__version__,
               jax.process_index(), jax.process_count(), jax.device_count(),
               jax.devices()[0].platform)


def _exit_codes(main):
  def wrapped(argv):
    from cl_jax import hosts, spec  # pylint: disable=g-import-not-at-top
    try:
      return main(argv)
    except spec.UserError as e:
      sys.exit(f"error: {e}")
    except hosts.Preempted as e:
      logging.warning("%s", e)
      sys.exit(EXIT_PREEMPTED)
  return wrapped


def config_override_error(argv: list) -> Optional[str]:
  """The one-paragraph message for a `--config.PATH=value` in `argv` that names no field of the
  `--config` file's config (ml_collections fails on it with a traceback), naming the closest
  existing paths; None when every override names a field."""
  import difflib  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  config_flag = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if not config_flag:
    return None
  path, _, arg = config_flag.partition(":")
  module_spec = importlib.util.spec_from_file_location("_cl_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  fields = []

  def walk(node, prefix):
    for key in node.keys():
      value = node[key]
      fields.append(f"{prefix}{key}")
      if hasattr(value, "keys"):
        walk(value, f"{prefix}{key}.")
  walk(config, "")
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      name = a[len("--config."):].split("=", 1)[0]
      if name not in fields:
        leaf = name.rsplit(".", 1)[-1]  # a field that moved keeps its name: list those first
        close = ([f for f in fields if f.rsplit(".", 1)[-1] == leaf] or
                 difflib.get_close_matches(name, fields, n=3, cutoff=0.6))[:4]
        return (f"--config.{name}: {path} has no field {name!r}"
                + (f"; the closest existing fields: {', '.join(close)}." if close else
                   f"; its sections are {', '.join(f for f in fields if '.' not in f)}."))
  return None


def run(main) -> None:
  """`app.run(main)` with the shared exit statuses (module docstring)."""
  try:
    app.run(_exit_codes(main))
  except SystemExit as e:
    if e.code == 1 and any(a.split("=")[0] in HELP_FLAGS for a in sys.argv[1:]):
      sys.exit(0)
    raise
  except Exception:  # an unknown --config.* override fails while absl parses the flags
    message = config_override_error(sys.argv[1:])
    if message:
      sys.exit(f"error: {message}")
    raise
