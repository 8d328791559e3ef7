"""cl_jax: contrastive representation learning and feature suppression in JAX/Flax.

`cl_jax.load(workdir)`: a trained run as a Python object (`cl_jax.run.Run`): its config, step
and `encode(images)`."""


def load(workdir, step=None, devices=None):
  """The run in `workdir` at its newest checkpoint (or `step`): `cl_jax.run.load`."""
  from cl_jax import run  # pylint: disable=g-import-not-at-top  (keeps `import cl_jax` light)
  return run.load(workdir, step=step, devices=devices)
