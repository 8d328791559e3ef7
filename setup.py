"""cl_jax: contrastive representation learning and feature suppression in JAX/Flax."""
import setuptools

setuptools.setup(
    name="cl_jax",
    version="0.1.0",
    description=("JAX/Flax library and experiment runner for contrastive learning and "
                 "feature suppression (Chen et al. 2021, Xue et al. 2023, Robinson et al. 2021)."),
    packages=setuptools.find_packages(include=["cl_jax", "cl_jax.*"]),
    python_requires=">=3.11",
    # Versions that are known to work together (Python 3.11; JAX 0.11 dropped 3.11).
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "tensorflow-cpu==2.21.0",
        "tensorflow-datasets==4.9.10",
        "ml-collections==1.1.0",
        "clu==0.0.12",
        "tensorboard==2.21.0",
        "scikit-learn>=1.5",
        "matplotlib>=3.8",
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.5"]},
)
