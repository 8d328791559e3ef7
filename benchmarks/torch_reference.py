"""The default train step in JAX vs the same model and step in PyTorch, in one run (CPU or GPU).

  pip install -e ".[cpu,bench]"     # torch (CPU wheel)
  python benchmarks/torch_reference.py [--pairs=5] [--rounds=8] [--steps=10] [--out=FILE.json]

Both sides: the embedded default's shapes (global batch 256, two views through the encoder as one
batch of 512 images of 16×16×(1 + 5 bits)), the colab ConvNet (3× conv3×3 stride 2 + BN + ReLU,
32/64/64 → Dense 128 + BN + ReLU = h), the 2-layer BN projection head (128 → 64), NT-Xent τ = 0.2 on
the 2B embeddings, a linear online probe on detached h, Adam 1e-3. Timed on one fixed batch already
in memory (no input pipeline), after warm-up.

Each side runs in its own process, as users run them, JAX and PyTorch processes alternating
(`--pairs` of each). A process times its callables in `--rounds` interleaved rounds of `--steps`
calls. Reported: per callable the median steps/s over all rounds and its quartiles;
`jax_step_vs_torch_*`, the median over pairs of (JAX process's median jax_step) / (the paired
PyTorch process's median), with the per-pair values; `jax_step_vs_jax_step_one_device`, the median
over rounds of the two rates of the same round. Callables:

  jax_step              the jitted cl_jax train step (cl_jax.train.train_step) as cl_jax.main
                        runs it: data-parallel over all devices, on CPU one per core
                        (cl_jax.cli.setup; PyTorch uses the same cores as threads)
  jax_step_one_device   the same step on one device (several devices only)
  jax_encoder_fwd_bwd   the ConvNet's forward + backward alone (where the step's time goes)
  jax_encoder_fwd       the ConvNet's forward alone (training mode)
  jax_encoder_fwd_bwd_native_conv   the same with XLA's convolution instead of CPU im2col
  torch_eager, torch_channels_last, torch_compile   the PyTorch step three ways
  torch_encoder_fwd_bwd, torch_encoder_fwd           PyTorch's ConvNet alone
"""
import functools
import json
import subprocess
import sys
import time

from cl_jax import cli, models, objectives, optim, paths, train
from cl_jax.data import pipeline, sources  # noqa: F401  (imports TensorFlow quietly first)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/simclr_randbit.py",
                                          "The JAX side's config (the default: embedded digits).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement (after warm-up).")
_ROUNDS = flags.DEFINE_integer("rounds", 8, "Interleaved timing rounds in each process.")
_PAIRS = flags.DEFINE_integer("pairs", 5, "Pairs of processes, one per side, run alternately.")
_SIDE = flags.DEFINE_enum("side", None, ["jax", "torch"], "Internal: time only this side in this "
                          "process and print its rates as JSON.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")


def warmed_up(fn, warmup: int = 5, sync=lambda out: out):
  """`fn` called `warmup` times (compilation), returned as a callable that runs it once and waits
  for the result."""
  for _ in range(warmup):
    out = fn()
  sync(out)
  return lambda: sync(fn())


def interleaved_rates(steps_by_name: dict, steps: int, rounds: int) -> dict:
  """{name: [calls/s of every round]}: every round times `steps` calls of each callable in turn
  (in reverse order every other round, so that no callable always follows the same one)."""
  rates = {name: [] for name in steps_by_name}
  for round_index in range(rounds):
    names = list(steps_by_name)[::-1 if round_index % 2 else 1]
    for name in names:
      step = steps_by_name[name]
      t = time.perf_counter()
      for _ in range(steps):
        step()
      rates[name].append(steps / (time.perf_counter() - t))
  return rates


def paired_ratio(rates: dict, numerator: str, denominator: str) -> float:
  """The median over rounds of rates[numerator] / rates[denominator] of the same round: on a
  machine whose speed drifts, comparing within a round cancels what the medians of each do not."""
  return float(np.median(np.array(rates[numerator]) / np.array(rates[denominator])))


def jax_train_step(config, batch, devices):
  """The jitted cl_jax train step data-parallel over `devices`, as a callable that runs one step
  on the fixed `batch` (sharded over the mesh) and returns the loss."""
  mesh = train.create_mesh(devices)
  model = models.create_model(config.model, {"label": 10})
  tx = optim.create_optimizer(config.optim, lambda _: config.optim.learning_rate)
  state = train.create_train_state(model, tx, (1, *batch["view1"].shape[1:]), 0, mesh)
  step_fn = jax.jit(functools.partial(train.train_step, model=model,
                                      objective=objectives.create(config, mesh.devices.size),
                                      loss_config=config.loss,
                                      schedule=lambda _: config.optim.learning_rate),
                    donate_argnums=(0,))
  hyper = train.traced_hyperparameters(config)
  holder = {"state": state}
  batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))

  def step():
    holder["state"], metrics = step_fn(holder["state"], batch, hyper)
    return metrics["loss"]
  return step


def jax_steps(config, batch) -> dict:
  encoder = models.create_encoder(config.model)
  x = jnp.concatenate([batch["view1"], batch["view2"]])
  variables = encoder.init(jax.random.PRNGKey(0), x[:1], train=False)

  def encoder_grad_fn(encoder):
    @jax.jit
    def encoder_grad(params, x):  # x an argument: as a closed-over constant XLA would fold it
      def f(p):
        h, _ = encoder.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
        return jnp.sum(h ** 2)
      return jax.grad(f)(params)
    return encoder_grad

  encoder_grad = encoder_grad_fn(encoder)
  native = encoder_grad_fn(encoder.clone(conv_fn=jax.lax.conv_general_dilated)) if hasattr(
      encoder, "conv_fn") else None

  @jax.jit
  def encoder_forward(params, x):
    return encoder.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         train=True, mutable=["batch_stats"])[0]

  sync = jax.block_until_ready
  return {"jax_step": warmed_up(jax_train_step(config, batch, jax.devices()), sync=sync),
          **({"jax_step_one_device": warmed_up(
              jax_train_step(config, batch, jax.devices()[:1]), sync=sync)}
             if jax.device_count() > 1 else {}),
          "jax_encoder_fwd_bwd": warmed_up(lambda: encoder_grad(variables["params"], x),
                                           sync=sync),
          "jax_encoder_fwd": warmed_up(lambda: encoder_forward(variables["params"], x),
                                       sync=sync),
          **({"jax_encoder_fwd_bwd_native_conv": warmed_up(
              lambda: native(variables["params"], x), sync=sync)} if native else {})}


def torch_steps(batch) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  class Encoder(nn.Module):
    def __init__(self, channels):
      super().__init__()
      layers, width_in = [], channels
      for width in (32, 64, 64):
        layers += [nn.Conv2d(width_in, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU()]
        width_in = width
      self.convs = nn.Sequential(*layers)
      self.dense = nn.Sequential(nn.LazyLinear(128, bias=False), nn.BatchNorm1d(128), nn.ReLU())

    def forward(self, x):
      return self.dense(torch.flatten(self.convs(x), 1))

  class Model(nn.Module):
    def __init__(self, channels):
      super().__init__()
      self.encoder = Encoder(channels)
      self.head = nn.Sequential(nn.Linear(128, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
                                nn.Linear(128, 64, bias=False), nn.BatchNorm1d(64))
      self.probe = nn.Linear(128, 10)

    def forward(self, x):
      h = self.encoder(x)
      return self.head(h), self.probe(h.detach())

  def ntxent(z, temperature=0.2):
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, targets)

  x_nhwc = np.concatenate([batch["view1"], batch["view2"]])
  x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(np.concatenate([batch["label"]] * 2).astype(np.int64))
  steps = {}
  for mode in ("eager", "channels_last", "compile"):
    torch.manual_seed(0)
    model = Model(x.shape[1])
    model(x[:2])  # materialise the lazy layer
    inputs = x
    if mode == "channels_last":
      model = model.to(memory_format=torch.channels_last)
      inputs = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(model=model, inputs=inputs, optimizer=optimizer):
      optimizer.zero_grad(set_to_none=True)
      z, logits = model(inputs)
      loss = ntxent(z) + F.cross_entropy(logits, labels)
      loss.backward()
      optimizer.step()
      return loss

    if mode == "compile":
      step = torch.compile(step)
    steps[f"torch_{mode}"] = warmed_up(step, warmup=5 if mode != "compile" else 10)
  encoder = Encoder(x.shape[1])
  encoder(x[:2])
  steps["torch_encoder_fwd_bwd"] = warmed_up(lambda: encoder(x).pow(2).sum().backward())

  def forward():
    with torch.no_grad():
      return encoder(x)
  steps["torch_encoder_fwd"] = warmed_up(forward)
  return steps


def side_rates(side: str, config) -> dict:
  """This process's measurement of one side ("jax" or "torch"): the interleaved rates of its
  callables, and what ran them."""
  rng = np.random.default_rng(0)
  shape = (config.train.batch_size, config.data.image_size, config.data.image_size,
           1 + config.data.random_bits)
  batch = {"view1": rng.uniform(size=shape).astype(np.float32),
           "view2": rng.uniform(size=shape).astype(np.float32),
           "label": rng.integers(0, 10, shape[0]).astype(np.int32)}
  if side == "jax":
    cli.setup(config.train.batch_size)  # as cl_jax.main: on CPU a device per core
    steps = jax_steps(config, {k: jnp.asarray(v) for k, v in batch.items()})
    info = {"device": str(jax.devices()[0]), "jax_devices": jax.device_count(),
            "jax_version": jax.__version__}
  else:
    import torch  # pylint: disable=g-import-not-at-top
    steps = torch_steps(batch)
    info = {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}
  return {"rates": interleaved_rates(steps, _STEPS.value, _ROUNDS.value), "info": info}


def run_side(side: str) -> dict:
  """`side_rates` measured in a fresh process (this script with --side), as users run each
  framework: in one process PyTorch's OpenMP threads, which spin after each operation, take the
  cores that JAX's devices need and change JAX's timings either way."""
  args = [a for a in sys.argv[1:] if not a.startswith(("--out", "--pairs", "--side"))]
  done = subprocess.run([sys.executable, __file__, *args, f"--side={side}"], check=True,
                        stdout=subprocess.PIPE, text=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(_):
  config = _CONFIG.value
  if _SIDE.value:
    print(json.dumps(side_rates(_SIDE.value, config)))
    return
  runs = {"jax": [], "torch": []}
  for pair in range(_PAIRS.value):
    for side in ("jax", "torch")[::-1 if pair % 2 else 1]:
      runs[side].append(run_side(side))
  rates = {name: [r for run in side_runs for r in run["rates"][name]]
           for side_runs in runs.values() for name in side_runs[0]["rates"]}
  results = {**runs["jax"][0]["info"], **runs["torch"][0]["info"],
             "global_batch": config.train.batch_size, "pairs": _PAIRS.value,
             "rounds_per_process": _ROUNDS.value, "steps_per_round": _STEPS.value,
             **{name: round(float(np.median(r)), 2) for name, r in rates.items()},
             "quartiles": {name: [round(float(q), 2) for q in np.percentile(r, [25, 75])]
                           for name, r in rates.items()}}
  for torch_name in ("torch_eager", "torch_channels_last", "torch_compile"):
    ratios = [np.median(j["rates"]["jax_step"]) / np.median(t["rates"][torch_name])
              for j, t in zip(runs["jax"], runs["torch"])]
    results[f"jax_step_vs_{torch_name}"] = round(float(np.median(ratios)), 3)
    results[f"jax_step_vs_{torch_name}_per_pair"] = [round(float(r), 3) for r in ratios]
  if "jax_step_one_device" in rates:
    results["jax_step_vs_jax_step_one_device"] = round(
        paired_ratio(rates, "jax_step", "jax_step_one_device"), 3)
  print(json.dumps(results, indent=1))
  if _OUT.value:
    paths.write_json(_OUT.value, results)


if __name__ == "__main__":
  cli.run(main)
