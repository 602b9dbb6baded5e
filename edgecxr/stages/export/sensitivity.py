"""Which quantized nodes cost the accuracy: per-node sensitivity, and the fewest nodes to keep in float.

Polygraphy's `debug precision` searches for the layers that must stay in higher precision; this is
the same idea on the Q/DQ ONNX, measured on held-out `val` images with the accuracy gate's own rule:

* **kept in float**: the fully quantized model with only node N back in float (its inputs read
  the float tensor and the original FP32 weight). The gain in top-1 agreement is what N alone
  costs in the quantized model.
* **quantized alone**: the FP32 model with only node N quantized. The loss is N's own damage,
  without the others' errors compounding.

Both variants are made by graph surgery on one calibrated model (`hybrid`), so ranking 70 nodes
needs one calibration and 140 short inference runs, not 70 calibrations. The ranking then drives
the greedy fallback: keep the most sensitive nodes in float, one at a time, until the gate passes
on `val`. The chosen set is re-calibrated for real and checked again on `val` by the caller; `test`
is never looked at here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgecxr.core.errors import BundleError
from edgecxr.runtime.onnxrt import session_options
from edgecxr.stages.gate.config import Gates
from edgecxr.stages.gate.result import ArtifactResult
from edgecxr.stages.gate.run import gate_checks
from edgecxr.stages.metrics import agreement, evaluate_predictions

#: ops of the Q/DQ format itself (never "a quantized node")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class NodeSensitivity:
    """One quantized node and what quantizing it costs on the analysis images."""

    name: str
    op_type: str
    weights: int  #: parameters of its float weight (0 for activation-only nodes)
    kept_float_agreement: float  #: top-1 agreement with FP32 of the INT8 model with only this node in float
    kept_float_gain: float  #: kept_float_agreement - the fully quantized model's agreement
    kept_float_mean_diff: float  #: mean |probability difference| vs FP32, same variant
    alone_agreement: float | None = None  #: agreement of the FP32 model with only this node quantized
    alone_mean_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantized_nodes(qdq: Any, weighted_only: bool = True) -> list[Any]:
    """Nodes of a Q/DQ model that read a dequantized input: the ones a fallback can keep in float.

    With `weighted_only` (the default) only nodes with a quantized weight (Conv, Gemm, MatMul,
    LSTM): they hold the arithmetic INT8 speeds up and the weight error; activation-only nodes
    (Add, MaxPool, Relu) follow their producers' ranges.
    """
    producers = {out: node for node in qdq.graph.node for out in node.output}
    inits = {t.name for t in qdq.graph.initializer}

    def dq_inputs(n: Any) -> list[Any]:
        return [p for i in n.input if (p := producers.get(i)) is not None and p.op_type == "DequantizeLinear"]

    out = []
    for n in qdq.graph.node:
        if n.op_type in _QDQ_OPS:
            continue
        dqs = dq_inputs(n)
        if dqs and (not weighted_only or any(d.input[0] in inits for d in dqs)):
            out.append(n)
    return out


def hybrid(qdq: Any, fp32: Any, float_nodes: Sequence[str]) -> Any:
    """A copy of the Q/DQ model in which `float_nodes` read float inputs (as in `fp32`); dead Q/DQ pruned.

    Node names are shared by the FP32 model and its Q/DQ model (onnxruntime keeps them), so each
    floated node takes its inputs from the same-named FP32 node, with the FP32 weights.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    fp32_inits = {t.name: t for t in fp32.graph.initializer}
    have = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in float_nodes:
            continue
        src = fp32_nodes.get(node.name)
        if src is None or len(src.input) != len(node.input):
            raise BundleError(f"node {node.name!r} has no FP32 counterpart; is this Q/DQ model made from that FP32 one?")
        del node.input[:]
        node.input.extend(src.input)
        for name in src.input:
            if name in fp32_inits and name not in have:
                model.graph.initializer.append(fp32_inits[name])
                have.add(name)
    _prune(model)
    return model


def _prune(model: Any) -> None:
    """Drop nodes whose outputs nothing reads (the floated nodes' orphaned Q/DQ) and unused initializers."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _predict(model: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    import onnxruntime as ort

    # Full optimisation: ONNX Runtime then fuses Q/DQ pairs into integer kernels (2x faster here than
    # running them as float ops), which is also how a deployed INT8 model runs.
    session = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)])


class Scorer:
    """Scores model variants on fixed images against the FP32 reference, with the gate's rule."""

    def __init__(self, fp32: Any, x: np.ndarray, y: np.ndarray, classes: Sequence[str], gates: Gates):
        self.x, self.y, self.classes, self.gates = x, y, list(classes), gates
        self.reference = _predict(fp32, x)
        self.ref_result = self._result("onnx_fp32", self.reference, reference=True)

    def _result(self, key: str, probs: np.ndarray, reference: bool = False) -> ArtifactResult:
        res = ArtifactResult(key, None, "onnxruntime", "ok", reference=reference)
        res.metrics = evaluate_predictions(self.y, probs, self.classes, bootstrap=0)
        res.agreement = None if reference else agreement(self.reference, probs)
        return res

    def score(self, model: Any) -> ArtifactResult:
        """Metrics, agreement and gate checks of one variant (its `passed` is the gate's verdict)."""
        res = self._result("onnx_int8", _predict(model, self.x))
        res.checks = gate_checks(self.gates.for_artifact("onnx_int8"), self.ref_result, res)
        return res


def score_row(res: ArtifactResult) -> dict[str, Any]:
    """One scored variant as a JSON-able row: agreement, accuracy, COVID sensitivity and the verdict."""
    return {"top1_agreement": res.agreement["top1_agreement"], "accuracy": res.metrics["accuracy"],
            "covid_sensitivity": (res.metrics.get("covid_vs_rest") or {}).get("sensitivity"),
            "passed": bool(res.passed), "failures": res.failures}


def _weight_counts(fp32: Any) -> dict[str, int]:
    """Node name -> parameters of its weight input (input 1) in the FP32 model, for every node."""
    dims = {t.name: t.dims for t in fp32.graph.initializer}
    return {n.name: int(np.prod(dims[n.input[1]])) if len(n.input) > 1 and n.input[1] in dims else 0
            for n in fp32.graph.node}


def analyse(
    qdq: Any, fp32: Any, scorer: Scorer, *, alone: bool = True, weighted_only: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[ArtifactResult, list[NodeSensitivity]]:
    """The fully quantized model's result, and every quantized node's sensitivity, most costly first."""
    full = scorer.score(qdq)
    base = full.agreement["top1_agreement"]
    nodes = quantized_nodes(qdq, weighted_only)
    names = [n.name for n in nodes]
    weights = _weight_counts(fp32)
    rows = []
    t0 = time.perf_counter()
    for k, node in enumerate(nodes, 1):
        kept = scorer.score(hybrid(qdq, fp32, [node.name]))
        row = NodeSensitivity(node.name, node.op_type, weights.get(node.name, 0),
                              kept.agreement["top1_agreement"], kept.agreement["top1_agreement"] - base,
                              kept.agreement["mean_abs_diff"])
        if alone:
            only = scorer.score(hybrid(qdq, fp32, [n for n in names if n != node.name]))
            row.alone_agreement = only.agreement["top1_agreement"]
            row.alone_mean_diff = only.agreement["mean_abs_diff"]
        rows.append(row)
        if log and (k % 10 == 0 or k == len(nodes)):
            log(f"  sensitivity: {k}/{len(nodes)} nodes, {time.perf_counter() - t0:.0f} s")
    # Most costly first: the agreement a node recovers in float, then (agreement moves in steps of
    # one image) how close to FP32 the probabilities come with it in float.
    rows.sort(key=lambda r: (-r.kept_float_gain, r.kept_float_mean_diff))
    return full, rows


def greedy_fallback(
    qdq: Any, fp32: Any, scorer: Scorer, ranking: Sequence[NodeSensitivity], *, max_nodes: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Keep nodes in float in ranking order until the gate passes on the scorer's images.

    Returns the float set (empty if the fully quantized model passes) and one history row per
    step. Raises BundleError when even `max_nodes` (default: all) floated nodes do not pass.
    """
    history: list[dict[str, Any]] = []
    chosen: list[str] = []
    limit = len(ranking) if max_nodes is None else min(max_nodes, len(ranking))
    for step in range(limit + 1):
        model = qdq if not chosen else hybrid(qdq, fp32, chosen)
        res = scorer.score(model)
        history.append({"float_nodes": len(chosen), "added": chosen[-1] if chosen else None,
                        "top1_agreement": res.agreement["top1_agreement"],
                        "accuracy": res.metrics["accuracy"], "passed": bool(res.passed),
                        "failures": res.failures})
        if log:
            log(f"  fallback step {step}: {len(chosen)} node(s) in float, agreement "
                f"{res.agreement['top1_agreement']:.2%}, {'passes' if res.passed else 'fails'} the gate")
        if res.passed:
            return chosen, history
        if step < limit:
            chosen.append(ranking[step].name)
    raise BundleError(f"the gate does not pass on the analysis images even with {limit} node(s) kept in float")


def _step(history: list[dict[str, Any]], stage: str, chosen: Sequence[str], res: ArtifactResult, **extra: Any) -> None:
    history.append({"stage": stage, "float_nodes": len(chosen), **extra,
                    "top1_agreement": res.agreement["top1_agreement"], "accuracy": res.metrics["accuracy"],
                    "passed": bool(res.passed), "failures": res.failures})


def bisect_fallback(
    qdq: Any, fp32: Any, scorer: Scorer, order: Sequence[str], *, full: ArtifactResult | None = None,
    trim: Sequence[str] = (), log: Callable[[str], None] | None = None,
) -> tuple[list[str], list[dict[str, Any]], dict[str, str]]:
    """The shortest prefix of `order` (most costly first) that, kept in float, passes the gate; then trimmed.

    Bisection needs about log2(len(order)) inference passes where the greedy walk needs one per
    node: it assumes that floating more of the ranking never hurts, which holds in expectation,
    not image by image; the caller's re-calibration confirms the result. `trim` names the nodes
    worth a pass each to drop again from the passing set (the weighted ones: they are what a float
    node costs in file size and INT8 speed; an activation-only node in float costs neither on
    TensorRT, which fuses it into its producer); one pass tries dropping all of them first. Returns the float set, one history row per pass,
    and why each node of the set stayed in float. Raises BundleError when even the whole of
    `order` in float does not pass.
    """
    history: list[dict[str, Any]] = []

    def run(stage: str, nodes: Sequence[str], **extra: Any) -> ArtifactResult:
        res = scorer.score(hybrid(qdq, fp32, nodes) if nodes else qdq)
        _step(history, stage, nodes, res, **extra)
        if log:
            log(f"  {stage}: {len(nodes)} node(s) in float, agreement {res.agreement['top1_agreement']:.2%}, "
                f"{'passes' if res.passed else 'fails'} the gate")
        return res

    if full is None:
        full = run("fully quantized", [])
    else:
        _step(history, "fully quantized", [], full)
    if full.passed:
        return [], history, {}
    lo, hi, hi_checked = 0, len(order), False  # invariant: prefix lo fails; prefix hi passes once checked
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run("bisect", order[:mid]).passed:
            hi, hi_checked = mid, True
        else:
            lo = mid
    if not hi_checked and not run("bisect", order[:hi]).passed:
        raise BundleError(f"the gate does not pass on the analysis images even with {hi} node(s) kept in float")
    chosen = list(order[:hi])
    lo_res = next((h for h in reversed(history) if h["float_nodes"] == lo and not h["passed"]), None)
    why = {n: f"in the shortest passing prefix of the ranking ({hi} of {len(order)} nodes; the first {lo} "
              f"fail{'' if lo_res is None else ' at ' + format(lo_res['top1_agreement'], '.2%')})" for n in chosen}
    trimmable = [n for n in trim if n in chosen]
    if len(trimmable) > 1:  # one pass first: often none of them is needed, and that saves a pass each
        rest = [n for n in chosen if n not in trimmable]
        if run("trim", rest, dropped=f"all {len(trimmable)} weighted").passed:
            chosen, trimmable = rest, []
            for name in list(why):
                if name not in chosen:
                    why.pop(name)
    for name in trimmable:
        rest = [n for n in chosen if n != name]
        res = run("trim", rest, dropped=name)
        if res.passed:
            chosen = rest
            why.pop(name)
        else:
            why[name] = (f"needed: quantizing it again gives agreement {res.agreement['top1_agreement']:.2%} "
                         f"and fails ({', '.join(res.failures)})")
    return chosen, history, why
