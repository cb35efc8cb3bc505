"""cgan-bench: compare discriminator conditioning heads (concat, projection, AC-GAN, ...) on one ResNet trunk."""
__version__ = "0.1.0"


def __getattr__(name):  # cgan_bench.load_generator without importing torch on `import cgan_bench`
    if name == "load_generator":
        from .generator_api import load_generator
        return load_generator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
