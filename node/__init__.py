"""inferd: a decentralized LLM inference network (miner daemon, gateway, hub contract, devnet)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inferd")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
