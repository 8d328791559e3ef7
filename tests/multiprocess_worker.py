"""One process of a multi-process test job (run by launch/local_cluster.py --module=...):

  python -m tests.multiprocess_worker WORKDIR ORDER OVERRIDES_JSON

Trains configs/simclr_randbit.py with the dotted OVERRIDES on a mesh whose devices are listed in
ORDER: 'process' (process by process), 'interleaved' (p0, p1, p0, p1, ... as jax.make_mesh lays
out TPU slices) or 'reversed' (the last process's devices first).
"""
import json
import sys

from cl_jax import hosts

hosts.initialize_distributed()

import jax  # noqa: E402

from cl_jax import train  # noqa: E402
from cl_jax import spec  # noqa: E402
from configs import simclr_randbit  # noqa: E402


def ordered_devices(order: str):
  by_process = [[d for d in jax.devices() if d.process_index == p]
                for p in range(jax.process_count())]
  if order == "interleaved":
    return [d for group in zip(*by_process) for d in group]
  if order == "reversed":
    return [d for group in by_process[::-1] for d in group]
  return [d for group in by_process for d in group]


if __name__ == "__main__":
  workdir, order, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
  config = simclr_randbit.get_config()
  spec.apply_overrides(config, overrides)
  try:
    train.train_and_evaluate(config, workdir, devices=ordered_devices(order))
  except hosts.Preempted:
    sys.exit(75)
