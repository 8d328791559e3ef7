"""Input: sources, competing features, augmentations and the tf.data pipeline.

TensorFlow (tf.data) is imported here first, for every entry point and notebook: its C++ layer
writes INFO notices (oneDNN, CPU features) to file descriptor 2 while it is imported, before any
log level applies, so fd 2 is silenced for that import only (a failing import still raises).
"""
import contextlib
import os


@contextlib.contextmanager
def _stderr_silenced():
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
try:
  with _stderr_silenced():
    import tensorflow as _tf  # noqa: F401
except ImportError as e:
  raise ImportError(
      "cl_jax's input pipeline needs TensorFlow (tf.data). Install cl_jax with an extra that "
      "brings it: pip install -e \".[cpu]\" (or [cuda12], [cuda13], [tpu]), or install "
      "tensorflow / tensorflow-cpu yourself.") from e
