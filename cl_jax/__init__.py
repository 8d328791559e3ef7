"""cl_jax: contrastive representation learning and feature suppression in JAX/Flax."""
