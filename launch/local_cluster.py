"""Run a multi-process JAX job on this machine: N processes on 127.0.0.1, each with D fake CPU
devices, joined by jax.distributed (gloo collectives). Rehearse a pod or cluster launch before
paying for one — the same code paths (process-local input rows, cross-process collectives,
checkpoints every process joins, process-0 reports) run here.

  python launch/local_cluster.py --processes=2 --devices_per_process=4 -- \\
      --config=configs/simclr_randbit.py --workdir=runs/two_hosts --config.train.num_steps=100

Everything after `--` goes to every process (default module: cl_jax.main). Each process gets
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (read by
cl_jax.hosts.initialize_distributed). SIGTERM/SIGINT to this launcher is forwarded to every process
(a preemption rehearsal). Exit status: the first non-zero status of the processes, else 0.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base: dict, *, port: int, num_processes: int, process_id: int,
                devices_per_process: int) -> dict:
  env = dict(base)
  env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
             JAX_PROCESS_ID=str(process_id),
             XLA_FLAGS=" ".join([  # the caller's XLA flags, with this process's device count
                 *(f for f in base.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_force_host_platform_device_count")),
                 f"--xla_force_host_platform_device_count={devices_per_process}"]))
  return env


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4)
  parser.add_argument("--module", default="cl_jax.main", help="python -m MODULE in each process")
  parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the module's arguments")
  options = parser.parse_args(argv)
  args = options.args[1:] if options.args[:1] == ["--"] else options.args
  port = free_port()
  children = [
      subprocess.Popen([sys.executable, "-m", options.module, *args],
                       env=process_env(os.environ, port=port, num_processes=options.processes,
                                       process_id=i,
                                       devices_per_process=options.devices_per_process))
      for i in range(options.processes)]

  def forward(signum, frame):
    del frame
    for child in children:
      if child.poll() is None:
        child.send_signal(signum)
  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  codes = [child.wait() for child in children]
  return next((code for code in codes if code), 0)


if __name__ == "__main__":
  sys.exit(main())
