"""The ConvNet's three convolutions one at a time: im2col matmul vs XLA's native convolution.

  python benchmarks/conv_layers.py [--batch=512] [--steps=20] [--rounds=5] [--out=FILE]

For each layer of the default ConvNet (3×3, stride 2, SAME; 16×16×6 → 8×8×32 → 4×4×64 → 2×2×64,
a batch of 512 = both views of 256 images), the milliseconds per call of three jitted programs,
each with y = conv(x, W) and the linear loss L = Σ y·r (r fixed, so no elementwise work hides
the convolution's):

  fwd         y
  fwd_dW      ∂L/∂W        (the first layer's backward pass: its input needs no gradient)
  fwd_dW_dx   ∂L/∂W, ∂L/∂x (the other layers' backward pass)

for `im2col` (models/convnet.py:im2col_conv, the CPU default) and `native`
(lax.conv_general_dilated). Medians of `rounds` interleaved rounds of `steps` calls. This is the
measurement behind the choice of convolution on CPU (README "Measured").
"""
import functools
import json
import time

from cl_jax import cli
from cl_jax.models import convnet

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from jax import lax  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 512, "Images per call (both views).")
_STEPS = flags.DEFINE_integer("steps", 20, "Calls per timing round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds (the median is reported).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")

LAYERS = {"conv0": (16, 6, 32), "conv1": (8, 32, 64), "conv2": (4, 64, 64)}  # size, in, out
DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def convolutions(x_shape, w_shape) -> dict:
  numbers = lax.conv_dimension_numbers(x_shape, w_shape, DIMENSIONS)
  return {"im2col": functools.partial(convnet.im2col_conv, window_strides=(2, 2),
                                      padding="SAME", dimension_numbers=numbers),
          "native": functools.partial(lax.conv_general_dilated, window_strides=(2, 2),
                                      padding="SAME", dimension_numbers=numbers)}


def programs(conv) -> dict:
  loss = lambda w, x, r: jnp.sum(conv(x, w) * r)
  return {"fwd": jax.jit(lambda w, x, r: conv(x, w)),
          "fwd_dW": jax.jit(jax.grad(loss)),
          "fwd_dW_dx": jax.jit(jax.grad(loss, argnums=(0, 1)))}


def main(_):
  cli.setup()  # as every entry point (the device count is the caller's: XLA_FLAGS)
  calls = {}
  for layer, (size, c_in, c_out) in LAYERS.items():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (_BATCH.value, size, size, c_in))
    w = jax.random.normal(keys[1], (3, 3, c_in, c_out))
    r = jax.random.normal(keys[2], (_BATCH.value, size // 2, size // 2, c_out))
    for variant, conv in convolutions(x.shape, w.shape).items():
      for kind, fn in programs(conv).items():
        jax.block_until_ready(fn(w, x, r))  # compile
        calls[(layer, variant, kind)] = functools.partial(fn, w, x, r)
  times = {key: [] for key in calls}
  for _ in range(_ROUNDS.value):
    for key, call in calls.items():
      start = time.perf_counter()
      for _ in range(_STEPS.value):
        out = call()
      jax.block_until_ready(out)
      times[key].append((time.perf_counter() - start) / _STEPS.value * 1e3)
  results = {"device": str(jax.devices()[0]), "batch": _BATCH.value, "unit": "ms per call"}
  for (layer, variant, kind), ms in times.items():
    results.setdefault(layer, {}).setdefault(variant, {})[kind] = round(float(np.median(ms)), 3)
  print(json.dumps(results, indent=1))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
