"""coke_jax: clustering-based self-supervised pretraining (CoKe) in JAX/Flax."""

__version__ = "0.1.0"
