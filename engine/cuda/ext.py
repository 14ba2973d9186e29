"""The compiled exposure: launchers of engine._cuda_ext (pybind11 over csrc/, built by nvcc).

Same names and arguments as engine.cuda.rtc.RtcLaunchers; each call adds the handle of
CuPy's current stream, so both exposures launch on the same stream in the same order.
"""
from __future__ import annotations

import functools

from engine.cuda.common import stream_ptr


class ExtLaunchers:
    exposure = "ext"

    def __init__(self):
        from engine import _cuda_ext
        self._ext = _cuda_ext

    def __getattr__(self, name: str):
        fn = getattr(self._ext, name)  # AttributeError for a launcher the extension lacks
        if name == "mse_partial_blocks":
            return fn

        @functools.wraps(fn)
        def launch(*args, **kwargs):
            return fn(*args, **kwargs, stream=stream_ptr())

        setattr(self, name, launch)  # cached: __getattr__ runs once per launcher
        return launch
