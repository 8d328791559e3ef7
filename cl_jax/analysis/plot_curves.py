"""Entry point: compare the probe curves of several runs in one PNG.

  python -m cl_jax.analysis.plot_curves RUN_DIR [RUN_DIR ...] --out=curves.png
"""
from absl import flags

from cl_jax import cli, paths
from cl_jax.analysis import curves

_OUT = flags.DEFINE_string("out", "curves.png", "Output PNG (a local path or a bucket URI).")


def main(argv):
  runs = [paths.workdir_path(run) for run in argv[1:]]
  curves.plot_curves({run.name: [paths.read_json(run / "curve.json")] for run in runs},
                     _OUT.value)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
