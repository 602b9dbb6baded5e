"""The CXR score: how unlike a frontal chest radiograph an input is, without the classifier's features.

Why: the pixel rules (`input_checks`) stop what is plainly no X-ray (noise, blanks, colour, text on a
white page) and the orientation gate stops turned, flipped and inverted films, but a gray photograph,
a chart, a screenshot or a CT slice saved as PNG can pass both, and the classifiers' own OOD scores
are weak (docs/SAFETY.md section 2). This score is independent of the classifier (one score for
every model, precision and backend) and nearly free: it is the Mahalanobis distance of the
orientation gate's 16 logits (the gate has already run on the film) to those of the upright
`train` films, under one shrunk covariance. The gate was trained to tell the 16 layouts of a chest
film apart, so its logits describe "where are the lungs, the mediastinum, the diaphragm"; a picture
that has none of them lands far from every upright film.

The parameters (mean, precision matrix, threshold, and the sha256 of the gate they were fitted on)
are shipped in `edgecxr/reference/cxr_score/cxr_score.json` with a sha256 of those parameters,
checked at load (a changed threshold or matrix is refused), and fitted by
`edgecxr.stages.cxr_score.fit` (scripts/fit_cxr_score.py): statistics on `train` films only, the
shrinkage chosen on `val` uprights and the FIT half of the OOD set (stages/confidence/ood_large),
the threshold at the split-conformal rank of the `val` uprights (>= 99% of them pass).

It runs in `inputs.prepare` (every path that classifies) after the pixel rules and the
orientation gate (so a turned film is refused for what it is, and with `orientation="fix"` the
film turned upright is what is scored); `InputRules.cxr_score` turns it off alone, and
`InputRules.off()` with the other checks. A refused input gets status `rejected` and the reason
`not like a frontal chest radiograph (CXR score 12.3 > 9.8)`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.errors import BundleError

#: where the shipped parameters live (package data: every file under edgecxr/reference/ ships)
SCORE_DIR = Path(__file__).resolve().parent.parent / "reference" / "cxr_score"
SCORE_JSON = "cxr_score.json"
FORMAT = "edgecxr-cxr-score/1"


def params_sha256(params: dict[str, Any]) -> str:
    """sha256 of the parameters as canonical JSON (sorted keys, no spaces): what the file records and
    what `CxrScore.load` recomputes, so any edit of a number in `params` is caught."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class CxrScore:
    """Mahalanobis distance of the gate's logits to the upright `train` films, and its threshold."""

    def __init__(self, meta: dict[str, Any], path: Path | None = None):
        params = meta["params"]
        self.meta = meta
        self.path = path
        self.mean = np.asarray(params["mean"], dtype=np.float64)
        self.precision = np.asarray(params["precision"], dtype=np.float64)
        self.threshold = float(params["threshold"])
        self.gate_sha256 = str(params["gate_sha256"])
        d = self.mean.shape[0]
        if self.mean.ndim != 1 or self.precision.shape != (d, d):
            raise BundleError(f"{path}: CXR score parameters have inconsistent shapes")

    @classmethod
    def load(cls, folder: str | Path | None = None) -> CxrScore:
        """The parameters in `folder` (default: the shipped ones), their sha256 checked."""
        folder = Path(folder) if folder is not None else SCORE_DIR
        path = folder / SCORE_JSON
        if not path.is_file():
            raise BundleError(f"{folder}: no CXR score parameters ({SCORE_JSON}); fit them with "
                              "scripts/fit_cxr_score.py, or turn the check off (InputRules(cxr_score=False))")
        try:
            meta = json.loads(path.read_text())
            params = meta["params"]
            recorded = meta["params_sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{path}: cannot read the CXR score parameters: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise BundleError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
        if params_sha256(params) != recorded:
            raise BundleError(f"{path}: the parameters' sha256 differs from the one it records; refusing to use them")
        return cls(meta, path)

    def score(self, logits: np.ndarray) -> np.ndarray | float:
        """The distance for one row of logits (a float) or for (N, 16) rows (an array)."""
        x = np.asarray(logits, dtype=np.float64)
        d = x - self.mean
        sq = np.einsum("...i,ij,...j->...", d, self.precision, d)
        out = np.sqrt(np.maximum(sq, 0.0))
        return float(out) if out.ndim == 0 else out

    def reason(self, value: float) -> str | None:
        """The rejection for a score above the threshold, else None."""
        if value > self.threshold:
            return f"not like a frontal chest radiograph (CXR score {value:.1f} > {self.threshold:.1f})"
        return None

    def describe(self) -> str:
        return f"CXR score {self.meta['params_sha256'][:12]} (gate logits, threshold {self.threshold:.2f})"


@functools.lru_cache(maxsize=4)
def _cached(folder: str) -> CxrScore:
    return CxrScore.load(folder)


def shipped_score(folder: str | Path | None = None) -> CxrScore:
    """The score, loaded once per process and folder; checked against the shipped gate's sha256."""
    from edgecxr.runtime.orientation import shipped_gate

    score = _cached(str(Path(folder) if folder is not None else SCORE_DIR))
    gate_sha = shipped_gate().meta.get("sha256")
    if score.gate_sha256 != gate_sha:
        raise BundleError(f"{score.path}: fitted on the orientation gate {score.gate_sha256[:12]}, but the gate is "
                          f"{str(gate_sha)[:12]}; refit it with scripts/fit_cxr_score.py")
    return score


def enabled(rules: Any) -> bool:
    """Whether the CXR score runs under these input rules (off with all checks off, or alone)."""
    return bool(rules.enabled and getattr(rules, "cxr_score", True))


def describe(rules: Any) -> str:
    """The audit trail's line, loading the score (so a missing or altered file fails at load, not on the
    first film): 'on: CXR score 1a2b... (gate logits, threshold 9.80)' or 'off'."""
    return f"on: {shipped_score().describe()}" if enabled(rules) else "off"


def check(image: np.ndarray, rules: Any, logits: np.ndarray | None = None) -> str | None:
    """The reason this decoded image is not like a frontal chest radiograph, else None (or the check
    is off). `logits`: the gate's, when it has already run on this very image (they are reused)."""
    if not enabled(rules):
        return None
    if logits is None:
        from edgecxr.runtime.orientation import shipped_gate

        logits = shipped_gate().check(image).logits
        if logits is None:
            raise BundleError("the orientation gate has no logits output; the CXR score cannot run")
    scorer = shipped_score()
    return scorer.reason(float(scorer.score(logits)))


def timed(image: np.ndarray) -> tuple[float, float]:
    """(ms of the gate's resize and run with its logits, ms of the distance) for one film."""
    from edgecxr.runtime.orientation import shipped_gate

    gate, scorer = shipped_gate(), shipped_score()
    t0 = time.perf_counter()
    logits = gate.check(image).logits
    t1 = time.perf_counter()
    scorer.reason(float(scorer.score(logits)))
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def bench_distance(image: np.ndarray, iterations: int = 200) -> dict[str, float]:
    """The score's own cost on one film: the distance on the gate's logits (the gate's run, timed by
    `orientation.bench_gate`, is shared with the gate's own check)."""
    from edgecxr.runtime.orientation import shipped_gate
    from edgecxr.runtime.timing import summarize

    scorer, logits = shipped_score(), shipped_gate().check(image).logits
    dist = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        scorer.reason(float(scorer.score(logits)))
        dist.append((time.perf_counter() - t0) * 1e3)
    return summarize(dist)
