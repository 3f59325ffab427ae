"""The generator behind parameter initialisation, seedable like torch.manual_seed."""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Seed the generator that initialises layer parameters; returns it."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator() -> np.random.Generator:
    """The current initialisation generator."""
    return _generator
