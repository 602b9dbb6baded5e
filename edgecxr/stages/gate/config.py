"""Gate thresholds: defaults, a TOML file, explicit overrides, and their validation."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecxr.core.artifacts import BUNDLE_FILES
from edgecxr.core.errors import EdgeCXRError

log = logging.getLogger(__name__)


#: Class whose sensitivity must not drop (the papers' screening question).
POSITIVE_CLASS = "covid"


_EPS = 1e-9


class GateConfigError(EdgeCXRError):
    """A gates TOML file or gate value is malformed."""


_GATE_FIELDS = ("max_acc_drop", "min_agreement", "covid_sensitivity_not_lower", "max_prob_diff", "min_images",
                "require_all_classes")


@dataclass(frozen=True)
class Gates:
    """Thresholds of the regression gate.

    Attributes:
        max_acc_drop: largest allowed accuracy drop vs the reference, in percentage points.
        min_agreement: smallest allowed top-1 agreement with the reference (fraction, 0..1).
        covid_sensitivity_not_lower: COVID-vs-rest sensitivity must be >= the reference's.
        max_prob_diff: largest allowed |probability difference| vs the reference (None: not gated).
        min_images: fewest images the split must hold for a verdict; a split with fewer, or one that
            lacks a whole class, fails the gate with the reason (a 2-image PASS says nothing).
        require_all_classes: a split lacking a class fails the gate (off only for data that has
            no such images at all, e.g. the committed examples have no COVID image).
        overrides: per-artifact replacements, e.g. {"onnx_int8": {"min_agreement": 0.97}}; the key
            "engines" applies to every TensorRT engine ("engine:<name>").
    """

    max_acc_drop: float = 1.0
    min_agreement: float = 0.98
    covid_sensitivity_not_lower: bool = True
    max_prob_diff: float | None = None
    min_images: int = 1
    require_all_classes: bool = True
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_gate_values(self.max_acc_drop, self.min_agreement, self.covid_sensitivity_not_lower, self.max_prob_diff)
        if not isinstance(self.min_images, int) or isinstance(self.min_images, bool) or self.min_images < 1:
            raise GateConfigError(f"min_images must be a whole number >= 1, got {self.min_images!r}")
        if not isinstance(self.require_all_classes, bool):
            raise GateConfigError(f"require_all_classes must be true or false, got {self.require_all_classes!r}")
        for key, values in self.overrides.items():
            unknown = set(values) - set(_GATE_FIELDS)
            if unknown:
                raise GateConfigError(f"gate overrides for {key!r} have unknown keys {sorted(unknown)}")
            dataclasses.replace(self, overrides={}, **values)  # validates the values

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "gates") -> Gates:
        """Build from a mapping: the gate keys, plus sub-tables of per-artifact overrides."""
        values: dict[str, Any] = {}
        overrides: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                if not _is_artifact_key(key):  # `[gates.onnx_fp61]` must not silently gate nothing
                    raise GateConfigError(f"{source}: [gates.{key}] names no artifact; known: "
                                          f"{[*BUNDLE_FILES, 'engines']} or engine:<file name>")
                overrides[key] = dict(value)
            elif key in _GATE_FIELDS:
                values[key] = value
            else:
                raise GateConfigError(f"{source}: unknown gate {key!r}; known: {list(_GATE_FIELDS)}")
        try:
            return cls(**values, overrides=overrides)
        except TypeError as exc:
            raise GateConfigError(f"{source}: {exc}") from exc
        except GateConfigError as exc:  # a bad value: name the file it came from
            raise GateConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> Gates:
        """Read a [gates] table (or a file of bare gate keys) from TOML.

        Example::

            [gates]
            max_acc_drop = 1.0                  # percentage points
            min_agreement = 0.98
            covid_sensitivity_not_lower = true

            [gates.onnx_fp16]                   # per-artifact overrides
            max_prob_diff = 1e-2
        """
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            from edgecxr.core.lazy import require

            tomllib = require("tomli", "reading gates TOML files on Python 3.10")
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise GateConfigError(f"{path}: gates file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise GateConfigError(f"{path}: invalid TOML: {exc}") from exc
        except UnicodeDecodeError:
            raise GateConfigError(f"{path}: not a TOML text file (not UTF-8)") from None
        if "gates" in data:
            extra = sorted(set(data) - {"gates"})
            if extra:  # e.g. a misspelled [gate] beside [gates]: its thresholds would never apply
                raise GateConfigError(f"{path}: unknown top-level key(s) {extra}; gate thresholds go in [gates]")
        else:
            bad = [f"[{k}]" for k, v in data.items() if isinstance(v, Mapping) and not _is_artifact_key(k)]
            if bad:  # a file of bare keys may only hold per-artifact tables beside them
                raise GateConfigError(f"{path}: unknown table(s) {bad}; gate thresholds go in [gates]")
        table = data.get("gates", data)
        if not isinstance(table, Mapping):
            raise GateConfigError(f"{path}: [gates] must be a table")
        return cls.from_mapping(table, str(path))

    def with_values(self, **values: Any) -> Gates:
        """A copy with the given gate values replaced; None values (flags not given) are ignored."""
        given = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **given)

    def for_artifact(self, key: str) -> Gates:
        """The gates that apply to one artifact (its overrides applied)."""
        values: dict[str, Any] = {}
        if key.startswith("engine:"):
            values.update(self.overrides.get("engines", {}))
        values.update(self.overrides.get(key, {}))
        return dataclasses.replace(self, overrides={}, **values) if values else self

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _GATE_FIELDS}
        if self.overrides:
            out["overrides"] = self.overrides
        return out


def _is_artifact_key(key: str) -> bool:
    return key in BUNDLE_FILES or key == "engines" or (key.startswith("engine:") and len(key) > len("engine:"))


def _check_gate_values(max_acc_drop: Any, min_agreement: Any, covid: Any, max_prob_diff: Any) -> None:
    if not isinstance(max_acc_drop, int | float) or isinstance(max_acc_drop, bool) or not 0 <= max_acc_drop <= 100:
        raise GateConfigError(f"max_acc_drop must be a number of percentage points in [0, 100], got {max_acc_drop!r}")
    if not isinstance(min_agreement, int | float) or isinstance(min_agreement, bool) or not 0 <= min_agreement <= 1:
        raise GateConfigError(f"min_agreement must be a fraction in [0, 1], got {min_agreement!r}")
    if not isinstance(covid, bool):
        raise GateConfigError(f"covid_sensitivity_not_lower must be true or false, got {covid!r}")
    if max_prob_diff is not None and (
        not isinstance(max_prob_diff, int | float) or isinstance(max_prob_diff, bool) or not 0 <= max_prob_diff <= 1
    ):
        raise GateConfigError(f"max_prob_diff must be in [0, 1] or absent, got {max_prob_diff!r}")
