"""Trifeature (after Hermann & Lampinen 2020; docs/method.md §2.7): procedural RGB images of one
shape filled with one texture in one colour, three independent features of 10 values each.

Every (shape, texture, colour) combination appears equally often: example i of a split of N
images has combination `order[i mod 1000]` of a seeded permutation of the 1,000 combinations, so
the three labels are balanced and independent whenever N is a multiple of 1,000. Each image draws
its own position, scale (0.55–0.85 of the half-side) and rotation (±30°) jitter. A shape is
rendered at 3×3 supersampling (soft edges); its texture is a pattern of "ink" (the colour) and
"paper" (the colour at 35 % brightness), in image coordinates, on a black background. Everything
is a function of the seed: the same seed gives the same images, bit for bit.
"""
import numpy as np

SHAPES = ("circle", "triangle", "square", "pentagon", "hexagon", "star", "plus", "tee",
          "rhombus", "trapezoid")
TEXTURES = ("solid", "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard",
            "dots", "rings", "zigzag", "crosshatch", "noise")
COLORS = {"red": (230, 25, 25), "green": (30, 190, 40), "blue": (40, 70, 235),
          "yellow": (240, 220, 30), "magenta": (230, 40, 220), "cyan": (40, 220, 230),
          "orange": (245, 130, 20), "purple": (130, 50, 200), "white": (240, 240, 240),
          "brown": (140, 85, 35)}
LABELS = ("shape", "texture", "color")
SUPERSAMPLE = 3
PAPER = 0.35  # brightness of a texture's background inside the shape


def _polygon(u, v, sides: int, radius: float = 0.95, phase: float = np.pi / 2):
  """Inside a regular polygon with `sides` vertices on the circle of `radius` (one at `phase`)."""
  phi = np.arctan2(v, u) - phase
  sector = 2 * np.pi / sides
  local = np.mod(phi, sector) - sector / 2
  return np.hypot(u, v) * np.cos(local) <= radius * np.cos(np.pi / sides)


def _star(u, v, points: int = 5, outer: float = 1.0, inner: float = 0.45):
  phi = np.mod(np.arctan2(v, u) - np.pi / 2, 2 * np.pi / points) / (2 * np.pi / points)
  radius = inner + (outer - inner) * np.abs(1 - 2 * phi)  # linear between tips and notches
  return np.hypot(u, v) <= radius


SHAPE_MASKS = {
    "circle": lambda u, v: u * u + v * v <= 0.85 ** 2,
    "triangle": lambda u, v: _polygon(u, v, 3, 1.0),
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.7,
    "pentagon": lambda u, v: _polygon(u, v, 5),
    "hexagon": lambda u, v: _polygon(u, v, 6, phase=0.0),
    "star": _star,
    "plus": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) |
                         ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)),
    "tee": lambda u, v: ((np.abs(u) <= 0.95) & (v >= 0.45) & (v <= 0.95)) |
                        ((np.abs(u) <= 0.25) & (v >= -0.95) & (v <= 0.95)),
    "rhombus": lambda u, v: np.abs(u) / 0.55 + np.abs(v) / 0.95 <= 1,
    "trapezoid": lambda u, v: (np.abs(v) <= 0.6) & (np.abs(u) <= 0.6 + 0.35 * (0.6 - v) / 1.2),
}


def _texture_ink(name: str, y, x, period: float, rng_image):
  """Where a texture puts ink, at image coordinates y, x (pixels) with its `period` (pixels)."""
  if name == "solid":
    return np.ones_like(x, bool)
  if name == "horizontal_stripes":
    return np.mod(y, period) < period / 2
  if name == "vertical_stripes":
    return np.mod(x, period) < period / 2
  if name == "diagonal_stripes":
    return np.mod(x + y, period * 1.4) < period * 0.7
  if name == "checkerboard":
    return (np.floor(x / (period / 2)) + np.floor(y / (period / 2))) % 2 == 0
  if name == "dots":
    return np.hypot(np.mod(x, period) - period / 2, np.mod(y, period) - period / 2) < period / 3
  if name == "rings":
    cy, cx = y.mean(), x.mean()
    return np.mod(np.hypot(y - cy, x - cx), period) < period / 2
  if name == "zigzag":
    return np.mod(y + np.abs(np.mod(x, period) - period / 2), period) < period / 2
  if name == "crosshatch":
    return (np.mod(x, period) < period / 4) | (np.mod(y, period) < period / 4)
  if name == "noise":  # a fixed random pattern of coarse cells, drawn per image
    cells = rng_image.random((int(y.max() // 2) + 2, int(x.max() // 2) + 2)) < 0.5
    return cells[(y // 2).astype(int), (x // 2).astype(int)]
  raise ValueError(f"Unknown texture {name!r}.")


def generate(num_images: int, image_size: int = 32, seed: int = 0):
  """(images uint8 [N, S, S, 3], labels {shape, texture, color: int32 [N]}) of `num_images`
  Trifeature images at `image_size` px, a function of `seed` (module docstring)."""
  rng = np.random.default_rng(seed)
  combos = rng.permutation(1000)[np.arange(num_images) % 1000]
  labels = {"shape": (combos // 100).astype(np.int32),
            "texture": (combos // 10 % 10).astype(np.int32),
            "color": (combos % 10).astype(np.int32)}
  s = image_size
  scale = rng.uniform(0.55, 0.85, num_images) * s / 2          # half-extent of the shape, px
  angle = rng.uniform(-np.pi / 6, np.pi / 6, num_images)
  margin = scale * 1.0
  centre = rng.uniform(margin[:, None], s - margin[:, None], (num_images, 2))  # (cy, cx)
  period = max(3.0, s / 8)
  image_seeds = rng.integers(0, 2**31, num_images)
  # Pixel sample positions: 3×3 per pixel, in pixel units.
  offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
  grid = (np.arange(s)[:, None] + offsets[None, :]).reshape(-1)
  ys, xs = np.meshgrid(grid, grid, indexing="ij")             # [S·3, S·3]
  pixel_y, pixel_x = np.meshgrid(np.arange(s) + 0.5, np.arange(s) + 0.5, indexing="ij")
  palette = np.asarray(list(COLORS.values()), np.float32) / 255.0
  images = np.zeros((num_images, s, s, 3), np.uint8)
  for i in range(num_images):
    dy, dx = ys - centre[i, 0], xs - centre[i, 1]
    cos, sin = np.cos(angle[i]), np.sin(angle[i])
    u = (cos * dx + sin * dy) / scale[i]                      # shape frame, v up
    v = (sin * dx - cos * dy) / scale[i]
    inside = SHAPE_MASKS[SHAPES[labels["shape"][i]]](u, v)
    coverage = inside.reshape(s, SUPERSAMPLE, s, SUPERSAMPLE).mean(axis=(1, 3))
    ink = _texture_ink(TEXTURES[labels["texture"][i]], pixel_y, pixel_x, period,
                       np.random.default_rng(image_seeds[i]))
    brightness = np.where(ink, 1.0, PAPER) * coverage
    images[i] = np.round(brightness[..., None] * palette[labels["color"][i]] * 255)
  return images, labels


def sample_grid(images: np.ndarray, labels, columns: int = 12) -> np.ndarray:
  """One row per shape, its first `columns` images side by side: uint8 [10·S, columns·S, 3]."""
  rows = [np.concatenate(list(images[np.flatnonzero(labels["shape"] == k)[:columns]]), axis=1)
          for k in range(len(SHAPES))]
  return np.concatenate(rows, axis=0)
