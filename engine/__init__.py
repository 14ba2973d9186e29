"""engine: a small deep learning engine whose every kernel is its own.

NumPy float64 references define each op (engine.reference), Numba kernels run it on
the CPU (engine.cpu), hand-written CUDA kernels on the GPU (kernels/, engine.cuda);
engine.backend is the one place that picks among them.
"""
__version__ = "0.1.0"
