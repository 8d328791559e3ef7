"""cl_jax: contrastive representation learning and feature suppression in JAX/Flax.

Install (see README): `pip install -c constraints.txt -e ".[cpu]"` on a laptop or CI;
`.[cuda12]` / `.[cuda13]` / `.[tpu]` on accelerators; plain `-e .` where JAX and TensorFlow are
already installed (Colab, prepared images): compatible versions found there are kept.

TensorFlow (used for tf.data only) is not a core requirement: `tensorflow` (Colab, GPU images)
and `tensorflow-cpu` (TPU VMs, laptops) are different distributions of the same module, and
requiring one would install it beside the other. The extras name tensorflow-cpu.
"""
import setuptools

TF_CPU = "tensorflow-cpu>=2.16"

setuptools.setup(
    name="cl_jax",
    version="0.1.0",
    description=("JAX/Flax library and experiment runner for contrastive learning and "
                 "feature suppression (Chen et al. 2021, Xue et al. 2023, Robinson et al. 2021)."),
    # `configs` is a package too: config files import their base (`from configs import ...`),
    # wherever the command runs from.
    packages=setuptools.find_packages(include=["cl_jax", "cl_jax.*", "configs"]),
    package_data={"configs": ["*.txt", "sweeps/*.json"]},
    python_requires=">=3.11",
    # Compatible ranges; the exact versions the tests ran with are in constraints.txt.
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.0",
        "optax>=0.2.6",
        "dm-pix>=0.4.3",  # the views' colour ops and blur on the device (cl_jax/data/views.py)
        "orbax-checkpoint>=0.11.20",
        "tensorflow-datasets>=4.9.3",
        "ml-collections>=0.1.1",
        "clu>=0.0.10",
        "tensorboard>=2.16",  # clu's summary writer imports it; TensorFlow 2.21 no longer brings it
        "etils[epath]>=1.7",
        "numpy>=1.26",
        "scikit-learn>=1.5",
        "matplotlib>=3.8",
    ],
    extras_require={
        "cpu": [TF_CPU],
        "cuda": ["jax[cuda]>=0.10.0", TF_CPU],  # JAX's alias for CUDA 12
        "cuda12": ["jax[cuda12]>=0.10.0", TF_CPU],
        "cuda13": ["jax[cuda13]>=0.10.0", TF_CPU],
        "tpu": ["jax[tpu]>=0.10.0", TF_CPU],
        "test": ["pytest>=8", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29",
                 "gcp-storage-emulator>=2024.8.3", "gcsfs>=2024.6", "pytest-xdist>=3.6"],
        # benchmarks/torch_reference.py: the same model and step in PyTorch (CPU wheel from PyPI)
        "bench": ["torch>=2.4"],
    },
)
