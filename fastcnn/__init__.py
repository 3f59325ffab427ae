"""fastcnn: compiled kernels for convolutional networks (Numba, C++, CUDA), NumPy in and out.

>>> import numpy as np, fastcnn
>>> x = np.ones((1, 1, 4, 4), np.float32)
>>> fastcnn.functional.max_pool2d(x, 2).shape
(1, 1, 2, 2)
"""

from fastcnn import functional, nn, optim
from fastcnn._compile import compile_kernels
from fastcnn._config import set_num_threads, show_config
from fastcnn._explain import explain_conv2d
from fastcnn._random import manual_seed
from fastcnn.autotune import autotune
from fastcnn.backends import BackendUnavailableError, available_backends, use_backend
from fastcnn.serialization import load, save

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "__version__",
    "autotune",
    "available_backends",
    "compile_kernels",
    "explain_conv2d",
    "functional",
    "load",
    "manual_seed",
    "nn",
    "optim",
    "save",
    "set_num_threads",
    "show_config",
    "use_backend",
]
