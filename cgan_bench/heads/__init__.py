"""Discriminator conditioning heads. Every module in this folder is imported, so its head registers itself."""
import importlib
import pkgutil

from .base import DiscriminatorOutput, Head
from .registry import HEADS, UnknownHeadError, build_head, head_class, head_params, register_head

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["HEADS", "DiscriminatorOutput", "Head", "UnknownHeadError", "build_head", "head_class", "head_params",
           "register_head"]
