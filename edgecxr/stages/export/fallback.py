"""Automatic precision fallback: the fewest nodes kept in float for the INT8 model to pass the gate.

Everything here is chosen on the selection split (`val` by default), never on the split the
publication gate reads (`test`): the sensitivity ranking, the greedy search over it, and the
confirmation of the chosen set after a real re-calibration. The ranking and the search run on one
calibrated model by graph surgery (see sensitivity.py); the caller re-calibrates with the chosen
nodes excluded, and `confirm` checks that model on the same images, adding the next-ranked nodes
if the real calibration lands on the other side of the gate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import ArgumentError, BundleError
from edgecxr.core.fileutil import atomic_write_text
from edgecxr.data.dataset import load_split
from edgecxr.stages.export.sensitivity import Scorer, analyse, greedy_fallback
from edgecxr.stages.gate.config import Gates

FALLBACKS = ("none", "auto")
#: extra nodes `confirm` may add when the re-calibrated model misses the gate the surgery passed
CONFIRM_EXTRA = 8


def make_scorer(bundle: Bundle, manifest: str | Path, fp32: Any, split: str, gates: Gates, progress: bool) -> Scorer:
    _, x, y = load_split(bundle, manifest, split, progress=progress)
    return Scorer(fp32, x, y, bundle.classes, gates)


def explain_and_choose(
    qdq: Any, fp32: Any, scorer: Scorer, *, choose: bool, alone: bool, log: Callable[[str], None],
) -> dict[str, Any]:
    """Rank the quantized nodes and, if `choose`, pick the float set greedily; a JSON-able record."""
    full, rows = analyse(qdq, fp32, scorer, alone=alone, log=log)
    record: dict[str, Any] = {
        "selection_images": len(scorer.y),
        "fully_quantized": {"top1_agreement": full.agreement["top1_agreement"], "accuracy": full.metrics["accuracy"],
                            "passed": bool(full.passed), "failures": full.failures},
        "reference_accuracy": scorer.ref_result.metrics["accuracy"],
        "ranking": [r.to_dict() for r in rows],
    }
    if choose:
        try:
            chosen, history = greedy_fallback(qdq, fp32, scorer, rows, log=log)
        except BundleError as exc:  # nothing passes: the caller still writes the ranking, then refuses
            record.update(float_nodes=None, search_failed=str(exc))
        else:
            record.update(float_nodes=chosen, search=history)
    return record


def confirm(
    requantize: Callable[[list[str]], Any], scorer: Scorer, chosen: list[str], ranking: Sequence[dict[str, Any]],
    log: Callable[[str], None],
) -> tuple[list[str], list[dict[str, Any]]]:
    """Re-calibrate with `chosen` in float (`requantize(nodes) -> model`) until the gate passes on the scorer's images."""
    steps: list[dict[str, Any]] = []
    rest = [r["name"] for r in ranking if r["name"] not in chosen]
    for extra in range(CONFIRM_EXTRA + 1):
        res = scorer.score(requantize(chosen))
        steps.append({"float_nodes": len(chosen), "top1_agreement": res.agreement["top1_agreement"],
                      "accuracy": res.metrics["accuracy"], "passed": bool(res.passed), "failures": res.failures})
        log(f"  re-calibrated with {len(chosen)} node(s) in float: agreement {res.agreement['top1_agreement']:.2%}, "
            f"{'passes' if res.passed else 'fails'} the gate on the selection split")
        if res.passed:
            return chosen, steps
        if extra < CONFIRM_EXTRA and rest:
            chosen = [*chosen, rest.pop(0)]
    raise BundleError(f"the re-calibrated INT8 model does not pass the gate on the selection split even with "
                      f"{len(chosen)} node(s) in float")


def write_explanation(record: dict[str, Any], out: Path, title: str) -> dict[str, str]:
    """The ranking as JSON, a Markdown table and a bar chart beside it; returns the file names."""
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    atomic_write_text(json_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    rows: list[dict[str, Any]] = record["ranking"]
    full = record["fully_quantized"]
    lines = [f"# INT8 sensitivity: {title}", "",
             f"Selection split: {record['selection_images']} images. Fully quantized: top-1 agreement with FP32 "
             f"{full['top1_agreement']:.2%}, accuracy {full['accuracy']:.2%} (FP32 {record['reference_accuracy']:.2%}).",
             "", "| rank | node | op | weights | agreement, only it in float | gain | mean abs diff | "
             "agreement, only it quantized |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    for k, r in enumerate(rows, 1):
        alone = "" if r.get("alone_agreement") is None else f"{r['alone_agreement']:.2%}"
        lines.append(f"| {k} | `{r['name']}` | {r['op_type']} | {r['weights']:,} | {r['kept_float_agreement']:.2%} | "
                     f"{r['kept_float_gain'] * 100:+.2f} pp | {r['kept_float_mean_diff']:.4f} | {alone} |")
    if record.get("float_nodes") is not None:
        lines += ["", f"Kept in float by the greedy search ({len(record['float_nodes'])}): "
                  + (", ".join(f"`{n}`" for n in record["float_nodes"]) or "none")]
    md_path = out.with_suffix(".md")
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    files = {"json": json_path.name, "markdown": md_path.name}
    plot = _plot(rows, out.with_suffix(".png"), title)
    if plot:
        files["plot"] = plot
    return files


def _short(name: str) -> str:
    """A readable label for a tf2onnx node name: its Keras layer ("block9_sepconv1_1") where it has one."""
    parts = name.split("/")
    return next((p for p in parts if p.startswith("block")), parts[-2] if len(parts) > 2 else parts[-1])


def _plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> str | None:
    """Bar chart of the agreement each node recovers in float (top 30); None without matplotlib."""
    from edgecxr.core.lazy import available

    if not available("matplotlib") or not rows:
        return None
    from edgecxr.stages.plots import plot_bars

    top = list(rows[:30])
    plot_bars([_short(r["name"]) for r in top],
              [r["kept_float_gain"] * 100 for r in top], path,
              title=f"{title}: agreement recovered by one node in float (pp)")
    return path.name




def analyse_candidate(bundle: Bundle, manifest: str | Path, fp32_model: Any, qdq_path: Path, split: str, gates: Gates,
             choose: bool, alone: bool, progress: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Sensitivity ranking (and, if `choose`, the greedy float set) of the candidate on `split`."""
    import onnx

    say(f"ranking the quantized nodes on {split} (one variant per node; minutes on a CPU)")
    scorer = make_scorer(bundle, manifest, fp32_model, split, gates, progress)
    record = explain_and_choose(onnx.load(str(qdq_path)), fp32_model, scorer, choose=choose, alone=alone, log=say)
    record["scorer"] = scorer
    return record


def fallback_record(analysis: dict[str, Any], fallback: str, split: str, csv_path: Path, bundle: Bundle) -> dict[str, Any]:
    """What bundle.json keeps: the mode, the split it chose on, the float set and why; the full
    ranking goes to files beside the calibration manifest."""
    files = write_explanation(analysis, csv_path.with_name(csv_path.stem + "-sensitivity"), bundle.model)
    record: dict[str, Any] = {"mode": fallback, "selected_on": split, "images": analysis["selection_images"],
                              "fully_quantized": analysis["fully_quantized"], "report": files}
    if analysis.get("float_nodes") is not None:
        gains = {r["name"]: r["kept_float_gain"] for r in analysis["ranking"]}
        record["float_nodes"] = [{"name": n, "agreement_gain_alone": gains.get(n)} for n in analysis["float_nodes"]]
        record["search"] = analysis.get("search", [])
        record["confirmation"] = analysis.get("confirmation", [])
    return record


def check_splits(split: str = "calib", verify: bool = True, verify_split: str = "test", fallback: str = "none",
                 explain: bool = False, select_split: str = "val") -> None:
    """Refuse (ArgumentError) splits that would gate or choose on the calibration images, before any work.

    `calibrate_bundle` calls it first; a caller may call it earlier (the CLI does, before copying a
    shipped model to calibrate it).
    """
    if verify and verify_split == split:
        raise ArgumentError(f"the gate must score held-out images, not the calibration split {split!r}",
                            params=("verify_split", "split"))
    if fallback not in FALLBACKS:
        raise BundleError(f"unknown fallback {fallback!r}; choose from {list(FALLBACKS)}")
    if (fallback == "auto" or explain) and select_split in (split, verify_split):
        raise ArgumentError(f"fallback and sensitivity choose on their own split, not {select_split!r} "
                            f"(calibration {split!r}, gate {verify_split!r}); use val",
                            params=("select_split", "split", "verify_split"))
