"""Input: sources, competing features, augmentations and the tf.data pipeline."""
try:
  import tensorflow as _tf  # noqa: F401  (tf.data; imported first for the message below)
except ImportError as e:
  raise ImportError(
      "cl_jax's input pipeline needs TensorFlow (tf.data). Install cl_jax with an extra that "
      "brings it: pip install -e \".[cpu]\" (or [cuda12], [cuda13], [tpu]), or install "
      "tensorflow / tensorflow-cpu yourself.") from e
