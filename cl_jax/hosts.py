"""Multi-host plumbing: joining a jax.distributed job, and noticing preemption (SIGTERM).

Cloud TPU VMs and SLURM need no arguments: `jax.distributed.initialize()` detects them. Anything
else (the local launcher, a hand-rolled cluster) sets JAX_COORDINATOR_ADDRESS (read by JAX itself),
JAX_NUM_PROCESSES and JAX_PROCESS_ID.
"""
import os
import signal

import jax
import orbax.checkpoint as ocp


def initialize_distributed():
  """jax.distributed.initialize(), with the process count and id from the environment when set
  (JAX_NUM_PROCESSES / JAX_PROCESS_ID), else auto-detected (TPU pod slices, SLURM, ...)."""
  num_processes = os.environ.get("JAX_NUM_PROCESSES")
  process_id = os.environ.get("JAX_PROCESS_ID")
  jax.distributed.initialize(
      num_processes=None if num_processes is None else int(num_processes),
      process_id=None if process_id is None else int(process_id))


class Preempted(Exception):
  """Training stopped on a preemption notice after saving a checkpoint at `step`."""

  def __init__(self, step: int, checkpoint_dir):
    super().__init__(f"Preempted: saved a checkpoint at step {step} in {checkpoint_dir}. Rerun "
                     "the same command to resume from it.")
    self.step = step


class PreemptionWatch:
  """`reached(step, manager)` is True at the step where every process should save and stop.

  Several processes: JAX's preemption service (started by jax.distributed.initialize) catches
  SIGTERM on any host and agrees on one step for all of them (Orbax's `reached_preemption`).
  One process: a SIGTERM handler, installed for the duration of the `with` block, sets a flag.
  """

  def __init__(self):
    self._signalled = False
    self._previous_handler = None

  def __enter__(self):
    if jax.process_count() == 1:
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc):
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
    return False

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._signalled = True

  def reached(self, step: int, manager: ocp.CheckpointManager) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self._signalled
