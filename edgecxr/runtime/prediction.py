"""What `Classifier.predict` returns for one input: a label and probabilities, or why there is none.

Its own module so that outputs (CLI tables, CSV, JSON, and the coming DICOM results) can describe
a result without importing the runtime that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

#: the statuses a Prediction can have (see Prediction.status)
STATUSES = ("ok", "rejected", "abstained", "failed")


def now_utc() -> str:
    """The audit timestamp: UTC to the millisecond, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Prediction:
    """The result for one input.

    Attributes:
        source: the input path (as given) or, for arrays, its index in the input list.
        label: top-1 class, None when the input failed.
        probabilities: class -> probability (empty when the input failed).
        top1: probability of `label`.
        preprocess_ms: decode + preprocessing of this input.
        inference_ms: this input's share of its batch's inference (batch time / batch size).
        error: why the input failed (file unreadable, not an image...), else None.
        status: "ok" (classified), "failed" (it could not be read or decoded, or the model gave
            no finite answer: see `error`; setting `error` sets this, so no output can call a
            failed input "ok"), "rejected" (decoded, but the input checks say it is not a chest
            X-ray; never sent to the model), or "abstained" (the model ran, but its
            out-of-distribution score says the image is unlike anything it was trained on: the
            label and probabilities are kept for inspection, not for use).
        reason: why the input failed (its `error`), was rejected or abstained (one line), None
            when status is "ok".
        ood_score: the out-of-distribution score of the model's features (higher: less like the
            training data), None where the model has no OOD fit or did not run.
        input_sha256: sha256 of the input's bytes (file or array), for the audit trail.
        dicom: Study/Series/SOP Instance UIDs of a DICOM input, None otherwise.
        time: when the prediction was made (UTC, ISO 8601).
        orientation: what the orientation gate said (runtime/orientation.py): "upright", the
            layout of a refused film ("rot180"), or, with the gate's "fix" mode, the layout it
            undid and that it did; None where the gate did not run.
    """

    source: str | int
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    top1: float | None = None
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    error: str | None = None
    status: str = "ok"
    reason: str | None = None
    ood_score: float | None = None
    input_sha256: str | None = None
    dicom: dict[str, str] | None = None
    time: str = field(default_factory=now_utc)
    orientation: str | None = None

    def __post_init__(self) -> None:
        if self.error is not None:  # the dataclass __init__ assigned status and reason after error
            self._failed(self.error)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "error" and value is not None:
            self._failed(value)

    def _failed(self, error: str) -> None:
        """An input with an error has status "failed" and the error as its reason, wherever it was set."""
        object.__setattr__(self, "status", "failed")
        if self.__dict__.get("reason") is None:
            object.__setattr__(self, "reason", error)

    @property
    def ok(self) -> bool:
        """Classified: not failed and not rejected (a rejected input has no label to use)."""
        return self.error is None and self.status == "ok"

    @property
    def path(self) -> str | None:
        return self.source if isinstance(self.source, str) else None

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[: max(0, k)]

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "source": self.source,
            "label": self.label,
            "top1": None if self.top1 is None else round(self.top1, 6),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "preprocess_ms": round(self.preprocess_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "error": self.error,
            "status": self.status,
            "reason": self.reason,
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
            "input_sha256": self.input_sha256,
            "dicom": self.dicom,
            "time": self.time,
            "orientation": self.orientation,
        }
        if top_k:
            data["top_k"] = [[c, round(p, 6)] for c, p in self.top_k(top_k)]
        return data
