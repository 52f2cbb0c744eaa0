"""prunecli: a command-line experiment runner for neural-network pruning research."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("prunecli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
