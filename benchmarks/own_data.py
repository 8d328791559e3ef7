"""Your data in, your encoder out: decoding an image folder, and `Run.encode` against the
evaluators' feature extraction.

  python benchmarks/own_data.py [--images=10000] [--workdir=runs/randbit] [--out=results.json]

1. Writes `--images` PNGs (MNIST test digits from --mnist_dir when its IDX files are there, else
   the embedded digits repeated; 28 px grey, in 10 class folders, 80/20 train/test), then times
   `sources.load` of both splits of the folder (decoded once, as a run does; cache cleared first).
2. With --workdir (a trained run; default: a 50-step run of the embedded default is trained
   first), times `cl_jax.load(workdir).encode` on the folder's training images against
   `evaluate.extract_features` of the same split (the evaluators' path: tf.data reads, device
   bit planes, the same jitted encoder) — images/s, compile excluded (each timed on its 2nd call).
"""
import json
import os
import shutil
import tempfile
import time

from cl_jax import cli, evaluate, train
from cl_jax.data import sources

import jax  # noqa: E402  (after cl_jax.data, which imports TensorFlow quietly)
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

_IMAGES = flags.DEFINE_integer("images", 10000, "PNG files to write and decode.")
_MNIST = flags.DEFINE_string("mnist_dir", "../shared/data/mnist", "MNIST IDX files (optional).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run to encode with (default: train a "
                               "50-step run of the embedded default in a temporary folder).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")


def write_png_folder(root: str, count: int) -> str:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(_MNIST.value, "t10k-images-idx3-ubyte.gz")):
    split = sources.load_idx(_MNIST.value, "train", 28)
    images = np.concatenate([split.images, sources.load_idx(_MNIST.value, "test", 28).images])
    labels = np.concatenate([split.labels["label"],
                             sources.load_idx(_MNIST.value, "test", 28).labels["label"]])
  else:
    split = sources.load_digits("train", 28)
    images, labels = split.images, split.labels["label"]
  for i in range(count):
    folder = os.path.join(root, "train" if i % 5 else "test", str(labels[i % len(labels)]))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(images[i % len(images), ..., 0]).save(os.path.join(folder, f"{i}.png"))
  return root


def main(argv):
  del argv
  cli.setup(512)  # on a CPU: one device per core, as cl_jax.main makes them
  result = {"device": str(jax.devices()[0].platform), "devices": jax.device_count(),
            "cores": os.cpu_count()}
  tmp = tempfile.mkdtemp(prefix="cl_jax_own_data_")
  try:
    root = write_png_folder(os.path.join(tmp, "folder"), _IMAGES.value)
    from configs import simclr_randbit  # pylint: disable=g-import-not-at-top
    config = simclr_randbit.get_config()
    config.data.update(dataset="folder", data_dir=root)
    sources._load_local.cache_clear()  # pylint: disable=protected-access
    start = time.perf_counter()
    train_split, test_split = sources.load(config.data, "train"), sources.load(config.data, "test")
    result["folder_decode_s"] = time.perf_counter() - start
    result["folder_images"] = len(train_split) + len(test_split)

    workdir = _WORKDIR.value
    if workdir is None:
      workdir = os.path.join(tmp, "run")
      trained = simclr_randbit.get_config()
      trained.train.num_steps = 50
      trained.evals = {}
      train.train_and_evaluate(trained, workdir)
    import cl_jax  # pylint: disable=g-import-not-at-top
    run = cl_jax.load(workdir, devices=jax.devices())
    config = run.config.copy_and_resolve_references()
    config.data.update(dataset="folder", data_dir=root)
    split = sources.load(config.data, "train")
    variables = jax.tree.map(lambda a: a[None], run.variables)

    def extract():
      features, = evaluate.extract_features(
          run.model, variables, split, config.data, seeds=[config.seed], split_name="train",
          batch_size=config.eval.batch_size, mesh=run.mesh)
      return jax.block_until_ready(features.h)

    timings = {}
    for name, fn in (("encode", lambda: run.encode(split.images, bits="train")),
                     ("extract_features", extract)):
      fn()  # compiles
      start = time.perf_counter()
      fn()
      timings[name] = len(split) / (time.perf_counter() - start)
    result.update({f"{k}_images_per_s": v for k, v in timings.items()})
    result["encoded_images"] = len(split)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps(result, indent=1))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
