"""The CUDA backends: raw CUDA C from ``kernels/cuda``, launched by one Python code path.

``cuda`` compiles the kernels with CuPy's ``RawModule`` and runs them on the GPU, on
CuPy's current device and stream (module ``gpu``). ``cuda-emu`` compiles the very same
sources with g++ under the emulation header ``kernels/cuda/emulate`` and runs them on
the CPU with NumPy arrays (module ``emu``): a testing backend, never chosen by array
type, that lets every machine test what the GPU runs. The launch code of each op family
(``activation``, ...) knows only a :class:`~fastcnn.backends.cuda._runtime.Runtime`;
the two runtimes differ in the final launch call alone.
"""
