"""TeckoChecker: watch sets of asynchronous jobs and fire actions, once, when a set is finished."""

from teckochecker.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
