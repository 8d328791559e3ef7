"""The one path layer for everything a run reads or writes: etils.epath (what Orbax and tfds use),
so a workdir may be a local folder or any bucket epath understands (gs://bucket/run, ...)."""
import io
import json

import jax
from etils import epath


def workdir_path(workdir) -> epath.Path:
  """`workdir` as an absolute epath.Path; URIs such as gs://bucket/run are kept as they are."""
  path = epath.Path(workdir)
  return path if "://" in str(workdir) else path.resolve()


def check_writable(workdir: epath.Path):
  """Create `workdir` and write and remove a probe file; raise OSError if that fails."""
  workdir.mkdir(parents=True, exist_ok=True)
  probe = workdir / f".write_probe_{jax.process_index()}"
  probe.write_text("ok")
  probe.unlink()


def read_json(path: epath.PathLike):
  return json.loads(epath.Path(path).read_text())


def write_json(path: epath.PathLike, obj):
  epath.Path(path).write_text(json.dumps(obj, indent=2))


def save_figure(fig, path: epath.PathLike, dpi: int = 110):
  """Save a matplotlib figure as PNG to `path` (local or bucket) and close it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  plt.close(fig)
  epath.Path(path).write_bytes(buffer.getvalue())


def is_local(path) -> bool:
  """True for a path on this machine's filesystem (not a bucket URI)."""
  return "://" not in str(path)
