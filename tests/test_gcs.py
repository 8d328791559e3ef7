"""A gs:// workdir against a real offline object store: gcp-storage-emulator on 127.0.0.1.

Orbax writes through tensorstore's GCS driver (TENSORSTORE_GCS_HTTP_URL points it at the
emulator) and through etils.epath (gcsfs, STORAGE_EMULATOR_HOST). What cannot be pointed at an
emulator: TensorFlow's own GCS client (tf.io.gfile, used by epath when TensorFlow is installed
and by clu's TensorBoard writer) has https://www.googleapis.com built in, with no endpoint
setting. So here epath uses its gcsfs backend and the TensorBoard writer is clu's logging writer;
everything else runs as in production, except one setting: the emulator ignores generation
preconditions, which Orbax's default OCDBT format needs for its manifest (compare-and-swap; saves
failed at random with "Malformed StorageGeneration"), so here Orbax writes its arrays without OCDBT
(plain zarr through the same tensorstore GCS driver). fake-gcs-server, which has preconditions,
was tried as well: saves worked but tensorstore's reads from it hung. No request leaves
127.0.0.1: tensorstore gets a fixed test token, gcsfs `anon`, the GCE metadata hosts loopback.
"""
import functools
import json
import socket

import fsspec
import jax
import orbax.checkpoint as ocp
import pytest
from clu import metric_writers
from etils import epath
from etils.epath import gpath

from cl_jax import paths, train
from cl_jax.data import pipeline
from tests.test_train import _crash_after

gcp_storage_emulator = pytest.importorskip("gcp_storage_emulator.server")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def gcs_bucket(monkeypatch):
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  for name, value in {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
                      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
                      "GCE_METADATA_ROOT": "127.0.0.1:9", "GCE_METADATA_HOST": "127.0.0.1:9",
                      "GCE_METADATA_IP": "127.0.0.1:9", "NO_GCE_CHECK": "true",
                      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath → gcsfs
  monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
  monkeypatch.setattr(metric_writers, "create_default_writer",
                      lambda *args, **kwargs: metric_writers.LoggingWriter())
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "__init__", functools.partialmethod(
      ocp.StandardCheckpointHandler.__init__, use_ocdbt=False))
  server = gcp_storage_emulator.create_server("127.0.0.1", port, in_memory=True,
                                              default_bucket="bucket")
  server.start()
  fsspec.filesystem("gcs").clear_instance_cache()
  yield "gs://bucket"
  server.stop()
  fsspec.filesystem("gcs").clear_instance_cache()


def test_gs_workdir_trains_crashes_resumes_and_writes_every_output(digits_config, tmp_path,
                                                                   gcs_bucket, monkeypatch):
  one_device = jax.devices()[:1]
  uninterrupted_batches = pipeline.TrainBatches.__iter__
  digits_config.evals.curve.every_steps = 3
  local = train.train_and_evaluate(digits_config, str(tmp_path / "local"), one_device)

  workdir = f"{gcs_bucket}/runs/randbit"
  assert str(paths.workdir_path(workdir)) == workdir  # not made into <cwd>/gs:/bucket/...
  _crash_after(3, monkeypatch)  # steps 1-3 run, checkpoint at 2 (and the step-3 curve point)
  with pytest.raises(RuntimeError, match="simulated crash"):
    train.train_and_evaluate(digits_config, workdir, one_device)
  bucket_dir = epath.Path(workdir)
  assert [p.name for p in (bucket_dir / "checkpoints").iterdir() if p.name.isdigit()] == ["2"]
  monkeypatch.setattr(pipeline.TrainBatches, "__iter__", uninterrupted_batches)
  resumed = train.train_and_evaluate(digits_config, workdir, one_device)
  assert resumed == local
  assert json.loads((bucket_dir / "eval.json").read_text()) == local
  assert paths.read_json(bucket_dir / "curve.json") == local["curve"]
  assert (bucket_dir / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(p.name for p in (bucket_dir / "checkpoints").iterdir()
                if p.name.isdigit()) == ["4", "6"]
  assert not (tmp_path / "gs:").exists() and not epath.Path("gs:").exists()
