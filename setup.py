"""coke_jax: CoKe (online constrained k-means) self-supervised pretraining in JAX/Flax."""

import setuptools

setuptools.setup(
    name="coke_jax",
    version="0.1.0",
    description="Clustering-based self-supervised pretraining (CoKe) in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["coke_jax", "coke_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "absl-py>=2.1",
        "clu>=0.0.12",
        "flax>=0.12",
        "importlib_resources>=6",
        "jax>=0.10,<0.12",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "pillow>=10",                  # the pictures of coke_jax/evaluation/pictures.py
        "safetensors>=0.4",            # weights for PyTorch (coke_jax/interop), no torch needed
        "scikit-learn>=1.6",           # validate_data, __sklearn_tags__ (coke_jax/kmeans.py)
        "scipy>=1.11",
        "tensorboard>=2.16",
        "tensorflow-cpu>=2.16; platform_machine=='x86_64'",
        "tensorflow>=2.16; platform_machine!='x86_64'",
        "tensorflow-datasets>=4.9.4",
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3"]},
)
