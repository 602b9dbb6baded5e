"""The names a real TensorRT Python bindings wheel defines, read on a CPU-only machine.

Why: TensorRT cannot be imported here (no libnvinfer, no GPU), but NVIDIA's bindings wheels
(`tensorrt-bindings` for 8.6, `tensorrt-cu12-bindings` for 10.x/11.x, about 1 MB each) install
anywhere, and their compiled module holds every class, method and enum member name as a
NUL-terminated string (pybind11 registers them by name). So the contract tests can check that each
name our code path uses exists in that version, without running it.

Reading: every NUL-terminated string that is a whole identifier, plus its identifier suffixes (the
linker merges "Logger" into the tail of "ILogger"), plus the top-level names of the wheel's
`__init__.py` (`__version__`, `nptype`, `volume`). Docstring words do not count, so `FP16` is found
in 10.x (BuilderFlag.FP16) and not in 11.x, where only prose mentions it.

Wheels are cached in ~/.cache/edgecxr/trt-wheels (EDGECXR_TRT_WHEELS overrides) and fetched once
with `pip download --no-deps`; after that everything works offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from functools import lru_cache
from pathlib import Path

from edgecxr.core.errors import EdgeCXRError

_IDENT_STRING = re.compile(rb"(?<=\x00)([A-Za-z_][A-Za-z0-9_]*)(?=\x00)")
_PY_TOP = re.compile(r"^(?:def|class)\s+(\w+)|^(\w+)\s*=", re.M)
#: longest string whose tails are taken as names (TensorRT's longest API names are about 45 characters)
_MAX_API_NAME = 64
#: interpreters tried when the running one has no wheel of that version (8.6.1 stops at cp311)
_FALLBACK_PYTHONS = ("3.11", "3.10", "3.12")


class WheelUnavailable(EdgeCXRError):
    """The bindings wheel is neither cached nor downloadable (offline, or not on the index)."""


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECXR_TRT_WHEELS") or "~/.cache/edgecxr/trt-wheels").expanduser()


def _split(requirement: str) -> tuple[str, str]:
    name, sep, version = requirement.partition("==")
    if not sep or not version:
        raise ValueError(f"{requirement!r}: expected NAME==VERSION")
    return name.strip(), version.strip()


def cached_wheel(requirement: str, cache: Path | None = None) -> Path | None:
    """The cached wheel of `requirement` (any Python tag: only its strings are read), or None."""
    name, version = _split(requirement)
    stem = re.sub(r"[-_.]+", "_", name).lower()
    found = sorted((cache or cache_dir()).glob(f"{stem}-{version}-*.whl"))
    return found[0] if found else None


def fetch_wheel(requirement: str, cache: Path | None = None, timeout: float = 300) -> Path:
    """The wheel of `requirement`, downloaded into the cache on first use; WheelUnavailable if it cannot be."""
    cache = cache or cache_dir()
    wheel = cached_wheel(requirement, cache)
    if wheel is not None:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(cache), requirement]
    errors = []
    for extra in ([], *(["--python-version", v] for v in _FALLBACK_PYTHONS)):
        try:
            proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            break
        wheel = cached_wheel(requirement, cache)
        if wheel is not None:
            return wheel
        errors.append((proc.stderr.strip().splitlines() or ["pip download failed"])[-1])
    raise WheelUnavailable(f"{requirement}: not cached in {cache} and pip download failed ({errors[-1]})")


@lru_cache(maxsize=16)
def binding_names(wheel: Path) -> frozenset[str]:
    """Every API name the bindings wheel defines (see the module docstring for how it is read)."""
    names: set[str] = set()
    with zipfile.ZipFile(wheel) as zf:
        members = zf.namelist()
        modules = [m for m in members if re.fullmatch(r"tensorrt[^/]*/tensorrt[^/]*\.(so|pyd)", m)]
        inits = [m for m in members if re.fullmatch(r"tensorrt[^/]*/__init__\.py", m)]
        if not modules:
            raise WheelUnavailable(f"{wheel.name}: no compiled tensorrt module inside (not a bindings wheel)")
        for member in modules:
            for match in _IDENT_STRING.finditer(zf.read(member)):
                word = match.group(1).decode("ascii")
                names.add(word)
                if len(word) <= _MAX_API_NAME:  # longer ones are mangled C++ symbols, not merged API names
                    names.update(word[i:] for i in range(1, len(word)) if word[i].isalpha() or word[i] == "_")
        for member in inits:
            for a, b in _PY_TOP.findall(zf.read(member).decode("utf-8", "replace")):
                names.add(a or b)
    return frozenset(names)


def wheel_version(wheel: Path) -> str:
    """'tensorrt_cu12_bindings-10.3.0-cp311-...whl' -> '10.3.0'."""
    return wheel.name.split("-")[1]


def missing_names(wanted: set[str] | frozenset[str], wheel: Path) -> list[str]:
    """Names of `wanted` the wheel does not define, sorted (empty: the path fits this version)."""
    return sorted(set(wanted) - binding_names(wheel))
