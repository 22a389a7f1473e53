"""The installed version: a leaf module, so that nothing imports upward to learn it."""

from importlib import metadata

try:
    __version__ = metadata.version("kanoclip")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
