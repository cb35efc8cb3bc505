"""Networks: the conditional generator and the shared discriminator trunk."""
from .discriminator import Discriminator, trunk_depth, trunk_layout
from .generator import Generator, generator_widths

__all__ = ["Discriminator", "Generator", "generator_widths", "trunk_depth", "trunk_layout"]
