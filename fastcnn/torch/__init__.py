"""fastcnn's kernels inside PyTorch: custom ops with autograd and ``torch.compile``, and
modules mirroring ``torch.nn``.

>>> import torch, fastcnn.torch
>>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
>>> model = fastcnn.torch.convert(model)  # the same weights, fastcnn's kernels
>>> type(model[0]).__module__
'fastcnn.torch.modules'

Needs PyTorch >= 2.4 (``torch.library.custom_op``): ``pip install 'fastcnn[torch]'``.
See :mod:`fastcnn.torch.ops` for what is copied and what is not.
"""

try:
    import torch
except ImportError as error:
    raise ImportError(
        "fastcnn.torch needs PyTorch >= 2.4: pip install 'fastcnn[torch]' (a CPU-only "
        "build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
    ) from error

if not hasattr(torch.library, "custom_op") or not hasattr(torch.library, "register_autograd"):
    raise ImportError(
        f"fastcnn.torch needs PyTorch >= 2.4 (torch.library.custom_op), found {torch.__version__}: "
        "pip install 'torch>=2.4'"
    )

from fastcnn.torch.modules import (
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Tanh,
    convert,
)
from fastcnn.torch.ops import (
    avg_pool2d,
    backend_for,
    batch_norm,
    conv2d,
    cross_entropy,
    leaky_relu,
    linear,
    max_pool2d,
    relu,
    sigmoid,
    tanh,
)

__all__ = [
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "avg_pool2d",
    "backend_for",
    "batch_norm",
    "conv2d",
    "convert",
    "cross_entropy",
    "leaky_relu",
    "linear",
    "max_pool2d",
    "relu",
    "sigmoid",
    "tanh",
]
