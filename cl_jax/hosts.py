"""Hosts and devices: one XLA device per CPU core, joining a jax.distributed job, and noticing
preemption (SIGTERM).

Cloud TPU VMs and SLURM need no arguments: `jax.distributed.initialize()` detects them. Anything
else (the local launcher, a hand-rolled cluster) sets JAX_COORDINATOR_ADDRESS (read by JAX itself),
JAX_NUM_PROCESSES and JAX_PROCESS_ID.
"""
import os
import signal

import jax
import orbax.checkpoint as ocp


MAX_CPU_DEVICES = 8  # a cautious cap, not a measurement (only 2 cores have been measured)


def cpu_device_count(batch_size: int, cores: int) -> int:
  """The largest d <= min(cores, MAX_CPU_DEVICES) that divides `batch_size` (d >= 1)."""
  return max(d for d in range(1, min(cores, MAX_CPU_DEVICES) + 1) if batch_size % d == 0)


def usable_cores() -> int:
  """The CPUs this process may run on (its affinity mask where the OS has one, e.g. Linux)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def use_cpu_cores(batch_size: int) -> int:
  """Make JAX's CPU backend one XLA device per usable core, before JAX starts; return the count
  (0: left as it was).

  Why: one XLA:CPU device runs the step's operations one after another, each non-matmul
  operation (elementwise, copies, im2col, reductions) on a single thread, so other cores idle;
  with one device per core the data-parallel step keeps them busy (measured speed-up in
  benchmarks/README.md). Under jit the loss still sees the global batch (BatchNorm statistics and negatives span all
  devices), so results equal the one-device run up to float summation order.

  The count is `cpu_device_count(batch_size, usable_cores())` (it must divide the global batch).
  Nothing changes if the user chose a count (XLA_FLAGS=--xla_force_host_platform_device_count=N or
  JAX_NUM_CPU_DEVICES=N) or JAX has already started (a notebook that ran JAX code). On GPU/TPU
  hosts jax.devices() are the accelerators and the CPU count does not matter.
  """
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or jax.config.jax_num_cpu_devices >= 0):
    return 0
  count = cpu_device_count(batch_size, usable_cores())
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # JAX has started: its device count is fixed
    return 0
  return count


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
