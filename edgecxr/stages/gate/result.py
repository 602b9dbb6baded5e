"""The gate's result model: per-check, per-artifact and whole-run verdicts, JSON-serialisable."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from edgecxr.core.errors import GateFailedError
from edgecxr.core.version import __version__
from edgecxr.stages.gate.config import Gates

log = logging.getLogger(__name__)

#: How many disagreeing image paths verify.json lists per artifact.
MAX_LISTED_DISAGREEMENTS = 20


@dataclass
class GateCheck:
    """One gate applied to one artifact."""

    gate: str
    value: float | None  # None: the gate could not be measured (e.g. no COVID images), which fails it
    threshold: float | None
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ArtifactResult:
    """How one artifact did: metrics, agreement with the reference and its gate checks."""

    key: str
    path: str | None
    backend: str | None
    status: str  # "ok" | "skipped" | "error"
    reason: str | None = None
    reference: bool = False
    required: bool = False
    metrics: dict[str, Any] | None = None
    agreement: dict[str, Any] | None = None
    checks: list[GateCheck] = field(default_factory=list)
    runner: dict[str, Any] | None = None
    seconds: float | None = None
    disagreements: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        """False: failed a gate or could not run (or a required one was skipped); True: passed; None: not gated."""
        if self.status == "error" or (self.status == "skipped" and self.required):
            return False
        if self.status != "ok" or self.reference:
            return None
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        if self.status == "error" or (self.status == "skipped" and self.required):
            return [f"{self.key}: could not be run: {self.reason}"]
        return [f"{self.key}: {c.detail}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["checks"] = [c.to_dict() for c in self.checks]
        out["passed"] = self.passed
        return out


@dataclass
class VerifyResult:
    """Outcome of one gate run; `passed` is False when any artifact failed a gate or could not run."""

    bundle: str
    split: str
    manifest: str
    manifest_sha256: str
    n: int
    per_class: dict[str, int]
    reference: str
    gates: Gates
    artifacts: list[ArtifactResult]
    time: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: the class-balanced subset size asked for (`--limit`), None for the whole split. A subset run
    #: is a quick look: it never becomes the published verdict (see report.write_report)
    limit: int | None = None

    @property
    def subset(self) -> bool:
        return self.limit is not None

    @property
    def passed(self) -> bool:
        return all(a.passed is not False for a in self.artifacts)

    @property
    def failures(self) -> list[str]:
        return [f for a in self.artifacts for f in a.failures]

    def get(self, key: str) -> ArtifactResult:
        for a in self.artifacts:
            if a.key == key:
                return a
        raise KeyError(key)

    def raise_for_failures(self, what: str = "") -> None:
        """Raise GateFailedError naming every failing gate (the result is its `.result`), if any failed."""
        if not self.passed:
            prefix = f"{what}: " if what else ""
            err = GateFailedError(f"{prefix}accuracy gate failed on {self.split} (n={self.n}): " + "; ".join(self.failures))
            err.result = self  # type: ignore[attr-defined]
            raise err

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "time": self.time,
            "seconds": self.seconds,
            "edgecxr_version": __version__,
            "data": {
                "manifest": self.manifest,
                "manifest_sha256": self.manifest_sha256,
                "split": self.split,
                "n": self.n,
                "per_class": self.per_class,
                "limit": self.limit,
                "subset": self.subset,
            },
            "reference": self.reference,
            "gates": self.gates.to_dict(),
            "passed": self.passed,
            "failures": self.failures,
            "notes": self.notes,
            "artifacts": {a.key: a.to_dict() for a in self.artifacts},
        }

    def summary(self) -> dict[str, Any]:
        """The short form kept in bundle.json["verify"] (verify.json has everything)."""
        arts = {}
        for a in self.artifacts:
            row: dict[str, Any] = {"status": a.status, "passed": a.passed}
            if a.reason:
                row["reason"] = a.reason
            if a.metrics:
                row["accuracy"] = a.metrics["accuracy"]
                cv = a.metrics.get("covid_vs_rest")
                if cv:
                    row["covid_sensitivity"] = cv["sensitivity"]
            if a.agreement:
                row["top1_agreement"] = a.agreement["top1_agreement"]
                row["max_abs_diff"] = a.agreement["max_abs_diff"]
            if a.path:
                row["path"] = a.path
            arts[a.key] = row
        return {
            "time": self.time,
            "split": self.split,
            "n": self.n,
            "manifest_sha256": self.manifest_sha256,
            "reference": self.reference,
            "gates": self.gates.to_dict(),
            "passed": self.passed,
            "failures": self.failures,
            "artifacts": arts,
        }
