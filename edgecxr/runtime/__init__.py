"""Inference backends behind one interface (see base.Runner) and the workstation `Classifier`."""

from edgecxr.runtime.base import Runner, availability, backends, create_runner, register

__all__ = ["Runner", "availability", "backends", "create_runner", "register"]
