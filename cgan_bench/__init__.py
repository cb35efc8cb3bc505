"""cgan-bench: compare discriminator conditioning heads (concat, projection, AC-GAN, ...) on one ResNet trunk."""
__version__ = "0.1.0"
