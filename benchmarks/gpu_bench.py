#!/usr/bin/env python3
"""cl_jax's own train step on one GPU vs PyTorch (torchvision), same machine, same run.

  python3 -m pip install --target /tmp/site ml_collections-1.1.0-py3-none-any.whl  # if missing
  PYTHONPATH=/tmp/site OUT=results_dir python3 benchmarks/gpu_bench.py . [BUDGET_S]

For a GPU host whose Python has JAX/Flax/optax/orbax/PyTorch/torchvision but no TensorFlow, tfds or
clu: those are stubbed (the train step needs none of them; device-resident random batches). Sections
run in priority order under a wall-clock budget (ONLY=name,name selects some); results go to
$OUT/gpu_results.json after every section, and a table is printed last. SMOKE=1 FORCE_STUBS=1 runs
tiny shapes on a CPU to check the plumbing. Results of one H200 run (2026-12-04) are in
benchmarks/results/h200_2026-12-04.json.
"""
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import statistics
import sys
import time
import traceback
import types

PROJ = sys.argv[1]
BUDGET = float(sys.argv[2]) if len(sys.argv) > 2 else 420.0
T0 = time.time()
OUT = os.environ.get("OUT", "/tmp")
R = {}
SECTIONS = []
R50_TRAIN_GFLOP = 3 * 2 * 4.09  # fwd ≈ 4.09 GMAC at 224 px; fwd+bwd ≈ 3× fwd
R18C_TRAIN_GFLOP = 3 * 2 * 0.56  # CIFAR-stem ResNet-18 at 32 px ≈ 0.56 GMAC fwd
PEAK_BF16 = 790e12  # measured dense bf16 matmul on this kind of machine 
SMOKE = bool(os.environ.get("SMOKE"))  # CPU plumbing check: tiny shapes, 1 step


def left():
  return BUDGET - (time.time() - T0)


def save():
  with open(os.path.join(OUT, "gpu_results.json"), "w") as f:
    json.dump(R, f, indent=1)


def section(name, need_s):
  def deco(fn):
    def run():
      only = os.environ.get("ONLY")
      if only and name not in only.split(","):
        return
      if left() < need_s:
        R[name] = {"skipped": f"{left():.0f}s left < {need_s}"}
        print(f"[{name}] skipped", flush=True)
        return
      t = time.time()
      try:
        R[name] = fn()
      except Exception as e:  # noqa: BLE001  keep going: every section is independent
        R[name] = {"error": f"{type(e).__name__}: {e}"[:600]}
        traceback.print_exc()
      R[name] = {**R[name], "section_s": round(time.time() - t, 1)} if isinstance(
          R[name], dict) else R[name]
      print(f"[{name}] {json.dumps(R[name])[:400]}", flush=True)
      save()
    SECTIONS.append(run)
    return run
  return deco


def timed(fn, steps, rounds=3):
  """Median seconds per call of fn() over `rounds` blocks of `steps` calls (fn syncs itself at
  block end via the returned sync callable)."""
  per = []
  if SMOKE:
    steps, rounds = 1, 1
  for _ in range(rounds):
    t = time.perf_counter()
    fn(steps)
    per.append((time.perf_counter() - t) / steps)
  return statistics.median(per), per


# ---------------------------------------------------------------- JAX side
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import flax  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint  # noqa: E402,F401


class _Dummy:
  def __getattr__(self, k):
    return _Dummy()

  def __call__(self, *a, **k):
    return _Dummy()


class _StubModule(types.ModuleType):
  def __getattr__(self, k):
    if k.startswith("__"):
      raise AttributeError(k)
    return _Dummy()


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  PREFIXES = ("tensorflow", "tensorflow_datasets", "clu")

  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in self.PREFIXES:
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    m = _StubModule(spec.name)
    m.__path__ = []
    return m

  def exec_module(self, module):
    pass


for _name in _StubFinder.PREFIXES:
  try:
    if os.environ.get("FORCE_STUBS"):
      raise ImportError(_name)
    importlib.import_module(_name)
  except Exception:  # noqa: BLE001
    sys.meta_path.insert(0, _StubFinder())
    break
sys.path.insert(0, PROJ)
os.chdir(PROJ)
from cl_jax import models, objectives, optim, train  # noqa: E402
from configs import simclr_randbit  # noqa: E402

R["env"] = {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "devices": [d.device_kind for d in jax.devices()], "backend": jax.default_backend()}
print("env", R["env"], flush=True)


def jax_step_setup(config, image_shape, probe_classes, batch, seeds=0):
  """The project's own train step (train.train_step) jitted as cl_jax.main does, on a
  device-resident random batch. seeds > 0: S independent runs as one vmapped program."""
  mesh = train.create_mesh(jax.devices()[:1])
  model = models.create_model(config.model, probe_classes,
                              predictor=config.loss.name in objectives.WITH_PREDICTOR)
  schedule = optim.learning_rate_schedule(config.optim, batch, 10_000, 100)
  tx = optim.create_optimizer(config.optim, schedule)
  objective = objectives.create(config, mesh.devices.size, num_steps=10_000)
  state = train.create_train_state(model, tx, (1, *image_shape), config.seed, mesh, objective)
  rng = np.random.default_rng(0)
  data = {"view1": rng.standard_normal((batch, *image_shape), np.float32),
          "view2": rng.standard_normal((batch, *image_shape), np.float32)}
  for name, n in probe_classes.items():
    data[name] = rng.integers(0, n, batch).astype(np.int32)
  hyper = train.traced_hyperparameters(config)
  fn = __import__("functools").partial(
      train.train_step, model=model, objective=objective, loss_config=config.loss,
      schedule=schedule)
  if seeds:
    stack = lambda x: jnp.broadcast_to(x, (seeds, *jnp.shape(x))) + 0  # noqa: E731
    state = jax.tree.map(stack, state)
    data = {k: stack(jnp.asarray(v)) for k, v in data.items()}
    hyper = {"base_key": jax.vmap(jax.random.PRNGKey)(jnp.arange(seeds)),
             "temperature": jnp.full((seeds,), config.loss.temperature, jnp.float32)}
    fn = jax.vmap(fn)
  data = jax.device_put(data)
  step = jax.jit(fn, donate_argnums=(0,))
  t = time.perf_counter()
  compiled = step.lower(state, data, hyper).compile()
  compile_s = time.perf_counter() - t
  holder = {"state": state}

  def run(n):
    s = holder["state"]
    for _ in range(n):
      s, m = compiled(s, data, hyper)
    jax.block_until_ready(m)
    holder["state"] = s

  run(3)
  return run, compile_s


def r50_config(dtype, batch):
  c = simclr_randbit.get_config("cifar10")
  c.model.encoder = "resnet50"
  c.model.head_hidden_dim = 2048
  c.model.embed_dim = 128
  c.model.dtype = dtype
  c.data.random_bits = 0
  c.train.batch_size = batch
  return c


def jax_r50(dtype, batch, steps=15):
  if SMOKE:
    batch = 2
  run, compile_s = jax_step_setup(r50_config(dtype, batch), (64, 64, 3) if SMOKE else (224, 224, 3),
                                  {"label": 100}, batch)
  sec, per = timed(run, steps)
  ips = 2 * batch / sec
  return {"images_per_s": round(ips, 1), "step_ms": round(sec * 1e3, 2),
          "blocks_ms": [round(p * 1e3, 2) for p in per], "compile_s": round(compile_s, 1),
          "mfu_vs_790T": round(ips * R50_TRAIN_GFLOP * 1e9 / PEAK_BF16, 3)}


# ---------------------------------------------------------------- PyTorch side
def torch_step_setup(arch, dtype, batch, image, channels_last=True, compile_=False):
  import torch
  import torch.nn as tnn
  import torchvision
  torch.backends.cudnn.benchmark = True
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  if SMOKE:
    batch, image = 2, 64
  if arch == "resnet50":
    enc = torchvision.models.resnet50()
    hid, width = 2048, 2048
  else:  # CIFAR stem ResNet-18
    enc = torchvision.models.resnet18()
    enc.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
    enc.maxpool = tnn.Identity()
    hid, width = 512, 512
  enc.fc = tnn.Identity()
  head = tnn.Sequential(tnn.Linear(hid, width, bias=False), tnn.BatchNorm1d(width), tnn.ReLU(),
                        tnn.Linear(width, 128, bias=False), tnn.BatchNorm1d(128))
  probe = tnn.Linear(hid, 100)
  mods = tnn.ModuleList([enc, head, probe]).to(dev)
  if channels_last:
    mods = mods.to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(mods.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  x1 = torch.randn(batch, 3, image, image, device=dev)
  x2 = torch.randn(batch, 3, image, image, device=dev)
  if channels_last:
    x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(
        memory_format=torch.channels_last)
  y = torch.randint(0, 100, (batch,), device=dev)
  amp = dtype == "bfloat16"

  def loss_fn(x1, x2, y):
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
      h = enc(torch.cat([x1, x2]))
      z = head(h)
      logits = probe(h.detach())
    z = tnn.functional.normalize(z.float(), dim=1)
    n = x1.shape[0]
    s = z @ z.T / 0.2
    s = s.masked_fill(torch.eye(2 * n, device=dev, dtype=torch.bool), -1e9)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(dev)
    return (tnn.functional.cross_entropy(s, target)
            + tnn.functional.cross_entropy(logits.float(), torch.cat([y, y])))

  if compile_:
    loss_fn = torch.compile(loss_fn)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(x1, x2, y)
    loss.backward()
    opt.step()
    return loss

  def run(n):
    for _ in range(n):
      loss = step()
    if dev == "cuda":
      torch.cuda.synchronize()
    return float(loss)

  t = time.perf_counter()
  run(3)
  return run, time.perf_counter() - t


def torch_bench(arch, dtype, batch, image, gflop, steps=15, **kw):
  run, warm_s = torch_step_setup(arch, dtype, batch, image, **kw)
  sec, per = timed(run, steps)
  ips = 2 * batch / sec
  return {"images_per_s": round(ips, 1), "step_ms": round(sec * 1e3, 2),
          "blocks_ms": [round(p * 1e3, 2) for p in per], "warmup_s": round(warm_s, 1),
          "mfu_vs_790T": round(ips * gflop * 1e9 / PEAK_BF16, 3)}


# ---------------------------------------------------------------- sections, in priority order
@section("jax_r50_bf16_b256", 90)
def _():
  return jax_r50("bfloat16", 256)


@section("torch_r50_bf16_b256_cl", 40)
def _():
  return torch_bench("resnet50", "bfloat16", 256, 224, R50_TRAIN_GFLOP)


@section("jax_convnet_default_seeds", 60)
def _():
  out = {}
  c = simclr_randbit.get_config()
  for seeds in ((0, 2) if SMOKE else (0, 9, 45)):
    run, compile_s = jax_step_setup(c, (16, 16, 6), {"label": 10}, c.train.batch_size,
                                    seeds=seeds)
    sec, per = timed(run, 50)
    runs = max(seeds, 1)
    out[f"S={runs}"] = {"step_ms": round(sec * 1e3, 3), "run_steps_per_s": round(runs / sec, 1),
                        "compile_s": round(compile_s, 1)}
    if left() < 40:
      break
  return out


@section("jax_r18cifar_bf16_b512", 60)
def _():
  c = simclr_randbit.get_config("cifar10")
  c.model.dtype = "bfloat16"
  c.data.random_bits = 0
  run, compile_s = jax_step_setup(c, (32, 32, 3), {"label": 10}, 512)
  sec, per = timed(run, 30)
  ips = 1024 / sec
  return {"images_per_s": round(ips, 1), "step_ms": round(sec * 1e3, 2),
          "compile_s": round(compile_s, 1), "epoch_s_cifar10": round(50000 / 512 * sec, 2),
          "mfu_vs_790T": round(ips * R18C_TRAIN_GFLOP * 1e9 / PEAK_BF16, 3)}


@section("torch_r18cifar_bf16_b512_cl", 30)
def _():
  r = torch_bench("resnet18", "bfloat16", 512, 32, R18C_TRAIN_GFLOP, steps=30)
  return {**r, "epoch_s_cifar10": round(50000 / 512 * r["step_ms"] / 1e3, 2)}


@section("jax_r50_f32_b256", 80)
def _():
  return jax_r50("float32", 256)


@section("torch_r50_f32_b256_cl", 40)
def _():
  return torch_bench("resnet50", "float32", 256, 224, R50_TRAIN_GFLOP)


@section("jax_r50_bf16_b512", 80)
def _():
  return jax_r50("bfloat16", 512)


@section("jax_moco_ifm_r50_bf16_b256", 60)
def _():
  from configs import moco_ifm
  c = moco_ifm.get_config("imagenet100")
  c.model.dtype = "bfloat16"
  batch = 2 if SMOKE else 256
  c.train.batch_size = batch
  run, compile_s = jax_step_setup(c, (64, 64, 3) if SMOKE else (224, 224, 3), {"label": 100},
                                  batch)
  sec, per = timed(run, 15)
  ips = 2 * batch / sec  # query + key encoder forwards; only the query encoder has a backward
  return {"images_per_s": round(ips, 1), "step_ms": round(sec * 1e3, 2),
          "blocks_ms": [round(p * 1e3, 2) for p in per], "compile_s": round(compile_s, 1)}


def ssl_r18cifar(method, batch=512, steps=30):
  """A method of configs/ssl_methods.py:cifar10 (ResNet-18, wide projector) in bf16."""
  from configs import ssl_methods
  c = ssl_methods.get_config("cifar10")
  c.loss.name = method
  c.model.dtype = "bfloat16"
  c.data.random_bits = 0
  batch = 8 if SMOKE else batch
  c.train.batch_size = batch
  if SMOKE:
    c.model.head_hidden_dim = c.model.embed_dim = c.model.predictor_hidden_dim = 64
  run, compile_s = jax_step_setup(c, (32, 32, 3), {"label": 10}, batch)
  sec, per = timed(run, steps)
  ips = 2 * batch / sec
  return {"images_per_s": round(ips, 1), "step_ms": round(sec * 1e3, 2),
          "compile_s": round(compile_s, 1), "epoch_s_cifar10": round(50000 / batch * sec, 2)}


for _method in ("byol", "simsiam", "barlow_twins", "vicreg"):
  section(f"jax_{_method}_r18cifar_bf16_b512", 45)(
      lambda method=_method: ssl_r18cifar(method))


def with_data(config, image_shape, num_examples, steps):
  """The training loop's work — the views made on the device from a resident split
  (pipeline.TrainBatches) and the step (train.training_programs) — against the same step on one
  resident batch. The split is random uint8 arrays of the dataset's shape (the GPU host has no
  TensorFlow to read it; the cost does not depend on the pixels), and without TensorFlow the
  epoch's order is a NumPy permutation instead of tf's index_shuffle (same cost on the device)."""
  from cl_jax.data import pipeline, sources
  if isinstance(pipeline.tf, _StubModule):
    pipeline.epoch_order = lambda seed, epoch, n, b: np.random.default_rng(
        [seed, epoch]).permutation(n)[:pipeline.steps_per_epoch(n, b) * b].astype(np.int32)
  rng = np.random.default_rng(0)
  split = sources.Split(images=rng.integers(0, 256, (num_examples, *image_shape), np.uint8),
                        labels={"label": rng.integers(0, 10, num_examples).astype(np.int32)},
                        num_classes={"label": 10})
  mesh = train.create_mesh(jax.devices()[:1])
  batch = config.train.batch_size
  per_epoch = pipeline.steps_per_epoch(num_examples, batch)
  batches = iter(pipeline.TrainBatches(split, config.data, seeds=[0], batch_size=batch,
                                       start_step=0, num_steps=10**9, mesh=mesh))
  programs = train.training_programs(config, mesh, {"label": 10}, per_epoch, 10_000)
  first = next(batches)
  holder = {"state": train.create_train_state(
      programs.model, programs.tx, (1, *first["view1"].shape[2:]), [0], mesh,
      programs.objective)}
  hyper = jax.tree.map(lambda x: x[None], train.traced_hyperparameters(config))
  t = time.perf_counter()
  compiled = programs.step.lower(holder["state"], first, hyper).compile()
  compile_s = time.perf_counter() - t

  def runner(get_batch):
    def run(n):
      s = holder["state"]
      for _ in range(n):
        s, m = compiled(s, get_batch(), hyper)
      jax.block_until_ready(m)
      holder["state"] = s
    return run
  resident, data = runner(lambda: first), runner(lambda: next(batches))
  data(3)
  sec_resident, _ = timed(resident, steps)
  sec_data, _ = timed(data, steps)
  return {"resident_step_ms": round(sec_resident * 1e3, 3),
          "with_data_step_ms": round(sec_data * 1e3, 3),
          "with_data_vs_resident": round(sec_resident / sec_data, 3),
          "images_per_s_with_data": round(2 * batch / sec_data, 1),
          "compile_s": round(compile_s, 1)}


@section("jax_with_data_convnet_default", 45)
def _():
  c = simclr_randbit.get_config()
  if SMOKE:
    c.train.batch_size = 32
  return with_data(c, (16, 16, 1), 1347, 10 if SMOKE else 100)


@section("jax_with_data_r18cifar_bf16_b512", 60)
def _():
  c = simclr_randbit.get_config("cifar10")
  c.model.dtype = "bfloat16"
  c.data.random_bits = 0
  if SMOKE:
    c.train.batch_size = 8
    c.model.encoder = "convnet"
  return with_data(c, (32, 32, 3), 2000 if SMOKE else 50000, 5 if SMOKE else 30)


@section("torch_r50_bf16_b256_compile", 150)
def _():
  return torch_bench("resnet50", "bfloat16", 256, 224, R50_TRAIN_GFLOP, compile_=True)


if __name__ == "__main__":
  for run_section in SECTIONS:
    run_section()
  R["total_s"] = round(time.time() - T0, 1)
  save()
  print("\n| section | images/s or runs·steps/s | step ms | MFU (790 TF/s) | compile s |")
  for name, r in R.items():
    if isinstance(r, dict) and name != "env":
      if "error" in r or "skipped" in r:
        print(f"| {name} | {r.get('error', r.get('skipped'))[:120]} |")
      elif name.startswith("jax_with_data"):
        print(f"| {name} | {r['images_per_s_with_data']} | {r['with_data_step_ms']} (resident "
              f"{r['resident_step_ms']}) | | {r['compile_s']} |")
      elif name.startswith("jax_convnet"):
        for k, v in r.items():
          if isinstance(v, dict):
            print(f"| {name} {k} | {v['run_steps_per_s']} | {v['step_ms']} | | {v['compile_s']} |")
      else:
        print(f"| {name} | {r.get('images_per_s')} | {r.get('step_ms')} | {r.get('mfu_vs_790T')} "
              f"| {r.get('compile_s', r.get('warmup_s'))} |")
