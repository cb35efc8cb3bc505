"""Networks: the conditional generator and the shared discriminator trunk."""
from .discriminator import Discriminator, trunk_depth
from .generator import Generator

__all__ = ["Discriminator", "Generator", "trunk_depth"]
