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
from edgecxr.core.errors import ArgumentError, BundleError, GateFailedError
from edgecxr.core.fileutil import atomic_write_text
from edgecxr.data.dataset import load_split
from edgecxr.stages.export.qdq_error import node_errors
from edgecxr.stages.export.sensitivity import (
    Scorer,
    analyse,
    bisect_fallback,
    greedy_fallback,
    quantized_nodes,
)
from edgecxr.stages.gate.config import Gates

FALLBACKS = ("none", "auto")
#: how nodes are ranked: each node's own quantization error (one pass), or agreement with it in float (one pass per node)
RANKINGS = ("error", "agreement")
#: which nodes the search may keep in float
SCOPES = ("all", "weighted")
#: extra nodes `confirm` may add when the re-calibrated model misses the gate the surgery passed
CONFIRM_EXTRA = 8


def make_scorer(bundle: Bundle, manifest: str | Path, fp32: Any, split: str, gates: Gates, progress: bool) -> Scorer:
    _, x, y = load_split(bundle, manifest, split, progress=progress)
    return Scorer(fp32, x, y, bundle.classes, gates)


def explain_and_choose(
    qdq: Any, fp32: Any, scorer: Scorer, *, choose: bool, alone: bool, log: Callable[[str], None],
    rank: str = "error", scope: str = "all",
) -> dict[str, Any]:
    """Rank the quantized nodes and, if `choose`, pick the float set; a JSON-able record.

    rank "error" (default): each node's own quantization error from one FP32 pass (qdq_error.py),
    then bisection over that ranking and a trim of its weighted nodes, a dozen passes in all.
    rank "agreement": one pass per node (the gate's own measure, slow), then the greedy walk.
    scope "all" covers every node that reads a quantized input; "weighted" only those with a
    quantized weight (the only ones the search covered before activation-only nodes were added).
    """
    if rank not in RANKINGS or scope not in SCOPES:
        raise BundleError(f"unknown ranking {rank!r} or scope {scope!r}; choose from {list(RANKINGS)} and {list(SCOPES)}")
    weighted_only = scope == "weighted"
    if rank == "agreement":
        full, rows = analyse(qdq, fp32, scorer, alone=alone, weighted_only=weighted_only, log=log)
        ranking = [r.to_dict() for r in rows]
    else:
        full = scorer.score(qdq)
        log(f"  fully quantized: agreement {full.agreement['top1_agreement']:.2%}; measuring each node's own "
            f"quantization error (one pass{'' if not alone else ', and one of the quantized model'})")
        errors = node_errors(qdq, fp32, scorer.x, weighted_only=weighted_only, accumulated=alone, log=log)
        ranking = [e.to_dict() for e in errors]
    record: dict[str, Any] = {
        "selection_images": len(scorer.y), "rank": rank, "scope": scope,
        "fully_quantized": {"top1_agreement": full.agreement["top1_agreement"], "accuracy": full.metrics["accuracy"],
                            "passed": bool(full.passed), "failures": full.failures},
        "reference_accuracy": scorer.ref_result.metrics["accuracy"],
        "ranking": ranking,
    }
    if choose:
        try:
            if rank == "agreement":
                chosen, history = greedy_fallback(qdq, fp32, scorer, rows, log=log)
                why = {n: "greedy: floated in ranking order until the gate passed" for n in chosen}
            else:
                trim = [e.name for e in sorted(errors, key=lambda e: -e.weights) if e.weights]
                chosen, history, why = bisect_fallback(qdq, fp32, scorer, [e.name for e in errors], full=full,
                                                       trim=trim, log=log)
                if chosen and len(chosen) == len(quantized_nodes(qdq, weighted_only=False)):
                    raise BundleError(f"the gate passes only with all {len(chosen)} quantized nodes in float, "
                                      "which leaves no INT8 model")
        except BundleError as exc:  # nothing passes: the caller still writes the ranking, then refuses
            record.update(float_nodes=None, search_failed=str(exc))
        else:
            record.update(float_nodes=chosen, search=history, why=why)
    return record


def confirm(
    requantize: Callable[[list[str]], Any], scorer: Scorer, chosen: list[str], ranking: Sequence[dict[str, Any]],
    log: Callable[[str], None],
) -> tuple[list[str], list[dict[str, Any]]]:
    """Re-calibrate with `chosen` in float (`requantize(nodes) -> model`) until the gate passes on the scorer's images."""
    steps: list[dict[str, Any]] = []
    rest = [r["name"] for r in ranking if r["name"] not in chosen]
    for extra in range(CONFIRM_EXTRA + 1):
        model = requantize(chosen)
        if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
            raise BundleError(f"re-calibrated with the {len(chosen)} node(s) the search chose in float, nothing is "
                              "quantized any more, which leaves no INT8 model")
        res = scorer.score(model)
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


def _db(nsr: float | None) -> str:
    """Signal-to-quantization-noise ratio in dB, as qdq_loss_debug reports it (higher is better)."""
    import math

    return "" if nsr is None else ("inf" if nsr <= 0 else f"{-10 * math.log10(nsr):.1f}")


def _table(record: dict[str, Any]) -> list[str]:
    rows: list[dict[str, Any]] = record["ranking"]
    chosen = set(record.get("float_nodes") or ())
    if record.get("rank", "agreement") == "agreement":
        lines = ["| rank | node | op | weights | agreement, only it in float | gain | mean abs diff | "
                 "agreement, only it quantized |", "|---:|---|---|---:|---:|---:|---:|---:|"]
        for k, r in enumerate(rows, 1):
            alone = "" if r.get("alone_agreement") is None else f"{r['alone_agreement']:.2%}"
            lines.append(f"| {k} | `{r['name']}` | {r['op_type']} | {r['weights']:,} | {r['kept_float_agreement']:.2%} | "
                         f"{r['kept_float_gain'] * 100:+.2f} pp | {r['kept_float_mean_diff']:.4f} | {alone} |")
        return lines
    lines = ["SQNR: signal-to-quantization-noise ratio in dB (higher is better). Own: the node's output with "
             "only its own inputs and weight quantized, fed the FP32 activations, against FP32. Accumulated: "
             "its output in the fully quantized model against FP32.", "",
             "| rank | node | op | weights | own SQNR dB | accumulated SQNR dB | kept in float |",
             "|---:|---|---|---:|---:|---:|---|"]
    for k, r in enumerate(rows, 1):
        lines.append(f"| {k} | `{r['name']}` | {r['op_type']} | {r['weights']:,} | {_db(r['own_nsr'])} | "
                     f"{_db(r.get('output_nsr'))} | {'yes' if r['name'] in chosen else ''} |")
    return lines


def write_explanation(record: dict[str, Any], out: Path, title: str) -> dict[str, str]:
    """The ranking as JSON, a Markdown table and a bar chart beside it; returns the file names."""
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    atomic_write_text(json_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    full = record["fully_quantized"]
    lines = [f"# INT8 sensitivity: {title}", "",
             f"Selection split: {record['selection_images']} images; ranking by {record.get('rank', 'agreement')}, "
             f"nodes: {record.get('scope', 'weighted')}. Fully quantized: top-1 agreement with FP32 "
             f"{full['top1_agreement']:.2%}, accuracy {full['accuracy']:.2%} (FP32 {record['reference_accuracy']:.2%}).",
             "", *_table(record)]
    if record.get("float_nodes") is not None:
        why = record.get("why", {})
        lines += ["", f"Kept in float by the search ({len(record['float_nodes'])}): "
                  + (", ".join(f"`{n}`" for n in record["float_nodes"]) or "none")]
        lines += [f"- `{n}`: {why[n]}" for n in record["float_nodes"] if n in why]
    if record.get("search"):
        lines += ["", "| pass | stage | nodes in float | agreement | accuracy | gate |", "|---:|---|---:|---:|---:|---|"]
        lines += [f"| {k} | {h.get('stage', 'greedy')}{' -' + h['dropped'] if h.get('dropped') else ''} | "
                  f"{h['float_nodes']} | {h['top1_agreement']:.2%} | {h['accuracy']:.2%} | "
                  f"{'pass' if h['passed'] else 'fail'} |" for k, h in enumerate(record["search"], 1)]
    md_path = out.with_suffix(".md")
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    files = {"json": json_path.name, "markdown": md_path.name}
    plot = _plot(record, out.with_suffix(".png"), title)
    if plot:
        files["plot"] = plot
    return files


def _short(name: str) -> str:
    """A readable label for a tf2onnx node name: its Keras layer ("block9_sepconv1_1") where it has one."""
    parts = name.split("/")
    return next((p for p in parts if p.startswith("block")), parts[-2] if len(parts) > 2 else parts[-1])


def _plot(record: dict[str, Any], path: Path, title: str) -> str | None:
    """Bar chart of the 30 most costly nodes; None without matplotlib."""
    import math

    from edgecxr.core.lazy import available

    rows = record["ranking"][:30]
    if not available("matplotlib") or not rows:
        return None
    from edgecxr.stages.plots import plot_bars

    labels = [f"{_short(r['name'])} ({r['op_type']})" for r in rows]
    if record.get("rank", "agreement") == "agreement":
        plot_bars(labels, [r["kept_float_gain"] * 100 for r in rows], path,
                  title=f"{title}: agreement recovered by one node in float (pp)")
    else:
        plot_bars(labels, [10 * math.log10(r["own_nsr"]) if r["own_nsr"] > 0 else -120.0 for r in rows], path,
                  title=f"{title}: each node's own quantization noise (dB relative to the signal; higher is worse)")
    return path.name


def select_float_nodes(
    bundle: Bundle, manifest: str | Path, fp32_model: Any, qdq_path: Path, requantize: Callable[[list[str]], Any],
    csv_path: Path, *, split: str, gates: Gates, fallback: str, explain: bool, rank: str, scope: str, progress: bool,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], list[str]]:
    """Rank the candidate's quantized nodes on `split` and, with fallback "auto", choose and confirm the float set.

    `requantize(nodes)` re-calibrates with `nodes` in float into the candidate file and returns the
    model. Returns the analysis record and the float set (the candidate then holds the confirmed
    model). Raises GateFailedError, after writing the ranking, when no float set passes on `split`.
    """
    import onnx

    choose = fallback == "auto"
    say(f"ranking the quantized nodes on {split} by {rank} ({scope} nodes)")
    scorer = make_scorer(bundle, manifest, fp32_model, split, gates, progress)
    analysis = explain_and_choose(onnx.load(str(qdq_path)), fp32_model, scorer, choose=choose, alone=explain,
                                  log=say, rank=rank, scope=scope)
    chosen: list[str] = []
    if choose and analysis["float_nodes"] is None:
        files = fallback_record(analysis, fallback, split, csv_path, bundle)["report"]
        raise GateFailedError(f"no INT8 model passes the gate on {split}: {analysis['search_failed']}; "
                              f"nothing published (sensitivity ranking in {', '.join(files.values())} "
                              f"beside {csv_path.name})")
    if choose and analysis["float_nodes"]:
        # confirm's last, passing re-calibration is the model left in the candidate
        try:
            chosen, steps = confirm(requantize, scorer, analysis["float_nodes"], analysis["ranking"], say)
        except BundleError as exc:
            analysis.update(float_nodes=None, search_failed=str(exc))
            files = fallback_record(analysis, fallback, split, csv_path, bundle)["report"]
            raise GateFailedError(f"no INT8 model passes the gate on {split}: {exc}; nothing published "
                                  f"(sensitivity ranking in {', '.join(files.values())} beside {csv_path.name})") from exc
        for name in chosen[len(analysis["float_nodes"]):]:
            analysis.setdefault("why", {})[name] = "added when the re-calibrated model missed the gate"
        analysis.update(float_nodes=chosen, confirmation=steps)
    return analysis, chosen


def fallback_record(analysis: dict[str, Any], fallback: str, split: str, csv_path: Path, bundle: Bundle) -> dict[str, Any]:
    """What bundle.json keeps: the mode, the split it chose on, the float set and why; the full
    ranking goes to files beside the calibration manifest."""
    files = write_explanation(analysis, csv_path.with_name(csv_path.stem + "-sensitivity"), bundle.model)
    record: dict[str, Any] = {"mode": fallback, "selected_on": split, "images": analysis["selection_images"],
                              "rank": analysis.get("rank"), "scope": analysis.get("scope"),
                              "fully_quantized": analysis["fully_quantized"], "report": files}
    if analysis.get("float_nodes") is not None:
        rows = {r["name"]: r for r in analysis["ranking"]}
        why = analysis.get("why", {})
        measure = "agreement_gain_alone" if analysis.get("rank", "agreement") == "agreement" else "own_nsr"
        key = "kept_float_gain" if measure == "agreement_gain_alone" else "own_nsr"
        record["float_nodes"] = [{"name": n, "op_type": rows.get(n, {}).get("op_type"),
                                  "weights": rows.get(n, {}).get("weights"), measure: rows.get(n, {}).get(key),
                                  "why": why.get(n)} for n in analysis["float_nodes"]]
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
