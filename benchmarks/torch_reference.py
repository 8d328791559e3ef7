"""The default train step in JAX vs the same model and step in PyTorch, in one run (CPU or GPU).

  pip install -e ".[cpu,bench]"     # torch (CPU wheel)
  python benchmarks/torch_reference.py [--steps=100] [--out=torch_reference.json]

Both sides: the embedded default's shapes (global batch 256, two views through the encoder as one
batch of 512 images of 16×16×(1 + 5 bits)), the colab ConvNet (3× conv3×3 stride 2 + BN + ReLU,
32/64/64 → Dense 128 + BN + ReLU = h), the 2-layer BN projection head (128 → 64), NT-Xent τ = 0.2 on
the 2B embeddings, a linear online probe on detached h, Adam 1e-3. Timed on one fixed batch already
in memory (no input pipeline), after warm-up. Reported steps/s:

  jax_step            the jitted cl_jax train step (cl_jax.train.train_step)
  jax_encoder_fwd_bwd the ConvNet's forward + backward alone (where the step's time goes)
  torch_eager, torch_channels_last, torch_compile   the PyTorch step three ways
  torch_encoder_fwd_bwd                              PyTorch's ConvNet forward + backward alone
"""
import functools
import json
import time

from cl_jax import models, optim, paths, train
from cl_jax.data import pipeline, sources  # noqa: F401  (imports TensorFlow quietly first)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/simclr_randbit.py",
                                          "The JAX side's config (the default: embedded digits).")
_STEPS = flags.DEFINE_integer("steps", 100, "Timed steps per measurement (after warm-up).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")


def rate(fn, steps: int, warmup: int = 5, sync=lambda out: out) -> float:
  """Calls of `fn` per second over `steps` calls after `warmup` calls."""
  for _ in range(warmup):
    out = fn()
  sync(out)
  t = time.perf_counter()
  for _ in range(steps):
    out = fn()
  sync(out)
  return steps / (time.perf_counter() - t)


def jax_rates(config, batch, steps: int) -> dict:
  mesh = train.create_mesh(jax.devices()[:1])
  model = models.create_model(config.model, {"label": 10})
  tx = optim.create_optimizer(config.optim, lambda _: config.optim.learning_rate)
  state = train.create_train_state(model, tx, (1, *batch["view1"].shape[1:]), 0, mesh)
  step_fn = jax.jit(functools.partial(train.train_step, model=model, loss_config=config.loss,
                                      schedule=lambda _: config.optim.learning_rate),
                    donate_argnums=(0,))
  hyper = train.traced_hyperparameters(config)
  holder = {"state": state}

  def step():
    holder["state"], metrics = step_fn(holder["state"], batch, hyper)
    return metrics["loss"]

  encoder = models.create_encoder(config.model)
  x = jnp.concatenate([batch["view1"], batch["view2"]])
  variables = encoder.init(jax.random.PRNGKey(0), x[:1], train=False)

  @jax.jit
  def encoder_grad(params):
    def f(p):
      h, _ = encoder.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                           train=True, mutable=["batch_stats"])
      return jnp.sum(h ** 2)
    return jax.grad(f)(params)

  return {"jax_step": rate(step, steps, sync=jax.block_until_ready),
          "jax_encoder_fwd_bwd": rate(lambda: encoder_grad(variables["params"]), steps,
                                      sync=jax.block_until_ready)}


def torch_rates(batch, steps: int) -> dict:
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
  results = {}
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
    results[f"torch_{mode}"] = rate(step, steps, warmup=5 if mode != "compile" else 10)
  encoder = Encoder(x.shape[1])
  encoder(x[:2])
  results["torch_encoder_fwd_bwd"] = rate(lambda: encoder(x).pow(2).sum().backward(), steps)
  results["torch_version"] = torch.__version__
  results["torch_threads"] = torch.get_num_threads()
  return results


def main(_):
  config = _CONFIG.value
  rng = np.random.default_rng(0)
  shape = (config.train.batch_size, config.data.image_size, config.data.image_size,
           1 + config.data.random_bits)
  batch = {"view1": rng.uniform(size=shape).astype(np.float32),
           "view2": rng.uniform(size=shape).astype(np.float32),
           "label": rng.integers(0, 10, shape[0]).astype(np.int32)}
  results = {"device": str(jax.devices()[0]), "global_batch": shape[0],
             "jax_version": jax.__version__}
  results.update({k: round(v, 2) for k, v in jax_rates(
      config, {k: jnp.asarray(v) for k, v in batch.items()}, _STEPS.value).items()})
  results.update({k: round(v, 2) if isinstance(v, float) else v
                  for k, v in torch_rates(batch, _STEPS.value).items()})
  print(json.dumps(results, indent=1))
  if _OUT.value:
    paths.write_json(_OUT.value, results)


if __name__ == "__main__":
  app.run(main)
