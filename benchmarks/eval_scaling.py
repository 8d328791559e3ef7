"""Memory and time of the linear probe on sharded features (evaluate.fit_linear_classifier).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/eval_scaling.py \
      --rows=65536 --dim=2048 --classes=100 [--out=eval_scaling.json]

Synthetic features [rows, dim] (class centres + noise) sharded over 1 device and over all devices.
Reports, per device count, XLA's per-device memory of the compiled probe (arguments, temporaries,
from `compiled.memory_analysis()`) and the fit's wall time. Features never leave the devices.
"""
import json
import time

import jax
import numpy as np
from absl import flags

from cl_jax import cli, evaluate, paths, train

_ROWS = flags.DEFINE_integer("rows", 65536, "Training rows.")
_DIM = flags.DEFINE_integer("dim", 2048, "Feature dimension D.")
_CLASSES = flags.DEFINE_integer("classes", 100, "Classes.")
_STEPS = flags.DEFINE_integer("steps", 50, "L-BFGS iterations.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")


def main(_):
  cli.setup()  # as every entry point (the device count is the caller's: XLA_FLAGS)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, _CLASSES.value, _ROWS.value).astype(np.int32)
  centres = rng.normal(size=(_CLASSES.value, _DIM.value)).astype(np.float32)
  features = centres[labels] + 3 * rng.normal(size=(_ROWS.value, _DIM.value)).astype(np.float32)
  valid = np.ones(_ROWS.value, bool)
  results = []
  for devices in sorted({1, len(jax.devices())}):
    mesh = train.create_mesh(jax.devices()[:devices])
    x, y, v = (evaluate.shard_rows(a, mesh) for a in (features, labels, valid))
    fit = evaluate.fit_linear_classifier.lower(x, y, v, num_classes=_CLASSES.value, l2=1e-3,
                                               steps=_STEPS.value).compile()
    memory = fit.memory_analysis()
    t = time.perf_counter()
    jax.block_until_ready(fit(x, y, v, l2=1e-3))
    results.append({
        "devices": devices, "rows": _ROWS.value, "dim": _DIM.value,
        "features_mb": round(features.nbytes / 2**20, 1),
        "argument_mb_per_device": round(memory.argument_size_in_bytes / 2**20, 1),
        "temp_mb_per_device": round(memory.temp_size_in_bytes / 2**20, 1),
        "fit_s": round(time.perf_counter() - t, 2)})
    print(results[-1])
  if _OUT.value:
    paths.write_json(_OUT.value, results)


if __name__ == "__main__":
  cli.run(main)
