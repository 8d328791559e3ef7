"""Test setup: 8 fake CPU devices (multi-device tests), no accelerators, no network, and one
persistent compilation cache for the session (its subprocesses included): most tests train the
same small programs, and compiling them once instead of in every test halves the suite's time.

Tests also compile with LLVM's optimisations off (FAST_COMPILE): their programs run a few steps,
so compilation is most of their time — a 6-step run of the embedded default takes 15 s instead of
20 s (7.4 s of XLA compilation instead of 12.9 s). The optimisation level changes how fast the
machine code runs, not what it computes; production runs keep XLA's default."""
import os
import tempfile

FAST_COMPILE = "--xla_backend_optimization_level=0"
# The user's own XLA flags (e.g. another numerical environment's, docs/design.md "Tests"), without
# what this file adds (pytest-xdist's workers inherit it from the controller's environment).
USER_XLA_FLAGS = " ".join(
    flag for flag in os.environ.get("XLA_FLAGS", "").split()
    if flag != FAST_COMPILE and not flag.startswith("--xla_force_host_platform_device_count="))
os.environ["XLA_FLAGS"] = (USER_XLA_FLAGS +
                           f" --xla_force_host_platform_device_count=8 {FAST_COMPILE}").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="cl_jax_tests_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import sys  # noqa: E402

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # cwd of the commands tests run
sys.path.insert(0, REPO)  # for `import configs...`


# Tests never write JAX's persistent compilation cache into the home folder (cl_jax.cli.setup
# would); tests/test_parallel.py checks the cache in a folder of its own.
os.environ["CL_JAX_COMPILATION_CACHE"] = "0"


def subprocess_env() -> dict:
  """The environment for a cl_jax command run by a test: the user's XLA_FLAGS + FAST_COMPILE, CPU,
  and the command's own CPU device count (cl_jax.main: one per core, hosts.use_cpu_cores)."""
  return {**os.environ, "XLA_FLAGS": f"{USER_XLA_FLAGS} {FAST_COMPILE}".strip(),
          "JAX_PLATFORMS": "cpu"}


# The small model and batch of every training test, as dotted overrides (also passed on the
# command line and to multi-process workers). The t-SNE map (4–9 s a run, most of a small run's
# evaluation) is drawn only where a test checks it (test_train.test_embedded_digits_end_to_end).
SMALL = {"model.head_hidden_dim": 32, "model.embed_dim": 16, "train.batch_size": 64,
         "evals.linear_eval.probe_steps": 20, "evals.curve.probe_steps": 20,
         "evals.embeddings.at_end": False}


def shrink(config, num_steps: int = 6):
  """`config` shrunk to seconds of training: SMALL, checkpoint every 2 steps."""
  from cl_jax import spec  # pylint: disable=g-import-not-at-top
  spec.apply_overrides(config, SMALL)
  config.train.update(num_steps=num_steps, log_every_steps=2, checkpoint_every_steps=2)
  return config


@pytest.fixture
def small():
  return shrink


@pytest.fixture
def digits_config():
  """The embedded default, shrunk to a few seconds of training."""
  from configs import simclr_randbit
  return shrink(simclr_randbit.get_config())


# The longest tests (2-process multi-host job, CLI kill/resume, notebook, GCS emulator: 1–4 min
# each on 2 cores) start first, so that the two xdist workers finish together.
LONGEST = ("test_multihost.py", "test_train.py::test_command_line_overrides",
           "test_notebook.py", "test_gcs.py")


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: not any(name in item.nodeid for name in LONGEST))
