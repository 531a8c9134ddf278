"""Portable, sans-I/O browser client core for the dashboard (CPython, MicroPython, Pyodide).

Entry point: `client.runtime.Runtime` (see docs/client.md). Nothing happens at import time.
"""

from .runtime import Runtime

__all__ = ["Runtime"]
