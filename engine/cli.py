"""What every command line of the engine shares: one-line errors, exit codes, checked numbers.

A user's mistake -- a bad option, a missing file, a path that cannot be written, data that
does not fit the model or in memory -- is one line ``error: ...`` on stderr and exit code 2. A run that
diverged (NaN/Inf) exits 3. Anything else is a bug of ours: its traceback is printed, as a
bug report needs it, and the exit code is 70 (EX_SOFTWARE). ``--debug`` (anywhere on the
command line) or ENGINE_DEBUG=1 prints the traceback of every error.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
import warnings

EXIT_USER, EXIT_NONFINITE, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 70, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell gives a program whose reader closed the pipe

# what a user can cause: bad values and types, files, a GPU or package that is not there
USER_ERRORS = (ValueError, TypeError, OSError, ImportError, RuntimeError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (argparse prints the usage first), exit 2."""

    def error(self, message):
        command = self.prog.replace("python -m engine", "").strip() or "engine"
        self.exit(EXIT_USER, f"error: {command}: {message} (see {self.prog} --help)\n")


def integer(minimum: int, maximum: int | None = None):
    """An argparse type: an int in [minimum, maximum]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {value}")
        return value
    return parse


def real(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite float in the interval given (NaN and Inf refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not math.isfinite(value) or too_low or too_high:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
            raise argparse.ArgumentTypeError(f"expected a finite number in {interval}, got {text}")
        return value
    return parse


def integers(minimum: int = 1, length: int | None = None):
    """An argparse type: comma-separated integers, each >= minimum (and `length` of them)."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if length is not None and len(values) != length:
            raise argparse.ArgumentTypeError(f"expected {length} comma-separated integers, got {text!r}")
        if any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"expected integers >= {minimum}, got {text!r}")
        return values
    return parse


def run(command, argv: list) -> int:
    """command(argv) -> exit code, with the engine's error policy (see the module docstring)."""
    debug = debugging(argv)
    argv = [a for a in argv if a != "--debug"]
    formatwarning = warnings.formatwarning
    if not debug:  # a warning is one line too, not "file:line: Category: message" and the source
        warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"
    try:
        import numpy as np
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is caught by fit, by name
            return command(argv)
    except BrokenPipeError:  # the reader went away (python -m engine summary resnet18 | head): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return EXIT_BROKEN_PIPE
    except (Exception, KeyboardInterrupt) as e:
        code, line = describe(e)
        if with_traceback(code, debug):
            traceback.print_exc()
        print(line, file=sys.stderr)
        return code
    finally:
        warnings.formatwarning = formatwarning


def describe(e: BaseException) -> tuple[int, str]:
    """The exit code and the one line the policy gives an error (engine.distributed reports
    a rank's errors with it too)."""
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "error: interrupted"
    if isinstance(e, FloatingPointError):  # training diverged (engine.training.NonFiniteLoss)
        return EXIT_NONFINITE, f"error: {e}"
    if isinstance(e, MemoryError):  # what was asked for does not fit in this machine's memory
        return EXIT_USER, (f"error: out of memory: {e or 'an allocation failed'}; ask for less (a smaller "
                           f"--batch-size, --image-size, --synthetic-size or model)")
    if isinstance(e, USER_ERRORS):
        message = str(e) or type(e).__name__
        if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
            message = f"{message}: {e.filename}"
        return EXIT_USER, f"error: {message}"
    return EXIT_INTERNAL, ("internal error: this is a bug in the engine, not in what you asked; please report it "
                           "with the traceback above")


def with_traceback(code: int, debug: bool) -> bool:
    """Whether an error's traceback is printed: always for a bug of ours, with --debug for
    the rest (an interruption's never)."""
    return code == EXIT_INTERNAL or (debug and code != EXIT_INTERRUPTED)


def debugging(argv: list) -> bool:
    return "--debug" in argv or os.environ.get("ENGINE_DEBUG", "") not in ("", "0")
