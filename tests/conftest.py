"""Test setup: 8 fake CPU devices (multi-device tests), no accelerators, no network."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # for `import configs...`


@pytest.fixture
def digits_config():
  """The embedded default, shrunk to a few seconds of training."""
  from configs import simclr_randbit
  config = simclr_randbit.get_config()
  config.model.head_hidden_dim = 32
  config.model.embed_dim = 16
  config.train.batch_size = 64
  config.train.num_steps = 6
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 2
  config.eval.probe_steps = 20
  return config
