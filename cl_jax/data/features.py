"""Competing features that both views share (SPEC §2).

Random bits (Chen et al. 2021, §2.1): every image gets an integer b ∈ [0, 2^k) that is FIXED per
image. Bit i = (b >> i) & 1 (least-significant first) becomes a constant H×W plane; the k planes
are concatenated after the image channels AFTER augmentation, so both views carry identical bits
that augmentation never touches, and evaluation images carry them too. The input then has C + k
channels. We draw b from a seeded generator indexed by the image's position in its split (the
colab hashes the image bytes; SPEC allows any stable per-image hash).
"""
import numpy as np
import tensorflow as tf

MAX_RANDOM_BITS = 30
_SPLIT_SALT = {"train": 0, "test": 1}


def random_bit_integers(num_images: int, num_bits: int, seed: int, split: str) -> np.ndarray:
  """b ∈ [0, 2^num_bits) for each image of `split` — a fixed function of (seed, split, index)."""
  rng = np.random.default_rng([seed, _SPLIT_SALT[split], 0xB175])
  return rng.integers(0, 2**num_bits, size=num_images, dtype=np.int64).astype(np.int32)


def bit_labels(bit_integers: np.ndarray, num_bits: int) -> np.ndarray:
  """[N] integers → [N, num_bits] 0/1 labels, bit i = (b >> i) & 1."""
  return (bit_integers[:, None] >> np.arange(num_bits)) & 1


def append_bit_planes(image: tf.Tensor, bit_integer: tf.Tensor, num_bits: int) -> tf.Tensor:
  """Concatenate `num_bits` constant planes ((b >> i) & 1 as float) after the channels of a float
  [..., H, W, C] image; `bit_integer` has the image's leading shape [...]."""
  if num_bits == 0:
    return image
  bits = tf.bitwise.bitwise_and(
      tf.bitwise.right_shift(tf.cast(bit_integer, tf.int32)[..., None], tf.range(num_bits)), 1)
  planes = tf.cast(bits, image.dtype)[..., None, None, :]
  planes = tf.broadcast_to(planes, tf.concat([tf.shape(image)[:-1], [num_bits]], axis=0))
  return tf.concat([image, planes], axis=-1)
