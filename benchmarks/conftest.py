"""pytest benchmarks/ --benchmark-only: make the repository importable without an install."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
