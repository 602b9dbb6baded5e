"""The package version: one home, read by the package, the CLI and every file edgecxr writes."""

__version__ = "0.1.0"
