"""`edgecxr build --dry-run`: everything a build checks before the first TensorRT call, on any machine.

Why: this project's machines have no GPU, and a Jetson user should learn that a workspace does not
fit an 8 GB Orin Nano, or that an operator is missing from their TensorRT's ONNX parser, before
copying a model to the device. So the dry run checks, without TensorRT or Polygraphy:

- the ONNX of the precision exists, and its operators and opset are in the ONNX parser's support
  list of each TensorRT line the profile targets (onnx_ops.toml, with its source);
- an INT8 model's Q/DQ nodes follow TensorRT's explicit-quantization rules (symmetric, zero point
  0, per-channel weights: stages/export/qdq_check.py, the rules `edgecxr calibrate` enforces);
- the model's input takes the profile's batch range and the bundle's preprocessing shape, and its
  first output is the class probabilities (a second, `features`, is allowed);
- the precision has a fast path on the GPUs the profile targets (the refusal a real build makes);
- workspace plus weights fit in half the profile's device memory (Jetson shares it with the OS);

and prints what the real build would do on each line (trt_lines.describe_path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgecxr.core.artifacts import onnx_key
from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BackendUnavailableError, BundleError
from edgecxr.core.lazy import require
from edgecxr.stages.engine import trt_lines
from edgecxr.stages.engine.profile import BuildProfile, check_precision_support

OPS_FILE = Path(__file__).with_name("onnx_ops.toml")
#: share of the profile's device memory that workspace plus weights may take
MEMORY_SHARE = 0.5


@dataclass
class DryRun:
    """Result of a dry run: checks (name, ok, detail), warnings and the per-line build plan."""

    model: str
    precision: str
    profile: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, problems: list[str], detail: str) -> None:
        self.checks.append({"check": name, "ok": not problems, "detail": detail, "problems": problems})

    @property
    def problems(self) -> list[str]:
        return [f"{c['check']}: {p}" for c in self.checks for p in c["problems"]]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "ok": self.ok, "model": self.model, "precision": self.precision,
                "profile": self.profile, **self.facts, "checks": self.checks, "warnings": self.warnings,
                "problems": self.problems, "plan": self.plan}


@lru_cache(maxsize=1)
def operator_lists() -> dict[str, Any]:
    """onnx_ops.toml: the parser's operator lists and which line uses which."""
    from edgecxr.stages.engine.profile import tomllib

    toml = tomllib or require("tomli", "build --dry-run on Python 3.10")
    return toml.loads(OPS_FILE.read_text(encoding="utf-8"))


def check_operators(ops: set[str], opset: int, line_key: str) -> tuple[list[str], list[str], str]:
    """(problems, warnings, source) of `ops` against the support list of one TensorRT line."""
    data = operator_lists()
    rule = data["lines"][line_key]
    main = data["lists"][rule["list"]]
    newer = data["lists"].get(rule.get("newer", ""), {})
    supported = set(main["operators"])
    problems, warnings = [], []
    for op in sorted(ops - supported):
        if op in set(newer.get("operators", ())) or (not newer and not rule.get("exact", True)):
            warnings.append(f"TensorRT {line_key}: operator {op} is not in the list known for this line "
                            f"({main['name']}); check that TensorRT's own operators.md lists it")
        else:
            problems.append(f"operator {op} is not supported by TensorRT {line_key}'s ONNX parser ({main['name']})")
    if opset > int(main["opset_max"]):
        (warnings if not rule.get("exact", True) else problems).append(
            f"TensorRT {line_key}: opset {opset} above the {main['opset_max']} of {main['name']}")
    return problems, warnings, main["name"] + (f", then {newer['name']} (warnings)" if newer else "")


def check_restrictions(model: Any) -> list[str]:
    """Node attributes the ONNX parser's support matrix restricts, for the operators our models use.

    From the "Restrictions" column of onnx-tensorrt's operators.md (8.5 and 10.15 alike): pooling is
    2D or 3D with unit dilations and no `Indices` output; LSTM needs `layout` 0 and `input_forget`
    0; a bidirectional RNN/GRU/LSTM uses the same activations both ways.
    """
    from onnx import helper

    problems = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        label = f"{node.op_type} '{node.name}'"
        if node.op_type in ("MaxPool", "AveragePool", "LpPool"):
            if len(attrs.get("kernel_shape", [])) not in (2, 3):
                problems.append(f"{label}: only 2D or 3D pooling is supported")
            if any(d != 1 for d in attrs.get("dilations", [])):
                problems.append(f"{label}: dilations must be all ones")
            if len(node.output) > 1 and node.output[1]:
                problems.append(f"{label}: the Indices output is not supported")
        if node.op_type in ("LSTM", "GRU", "RNN"):
            if attrs.get("layout", 0) != 0:
                problems.append(f"{label}: layout must be 0 (sequence first)")
            if node.op_type == "LSTM" and attrs.get("input_forget", 0) != 0:
                problems.append(f"{label}: input_forget must be 0")
            acts = attrs.get("activations", [])
            if attrs.get("direction", b"forward") == b"bidirectional" and acts and acts[: len(acts) // 2] != acts[len(acts) // 2 :]:
                problems.append(f"{label}: a bidirectional layer needs the same activations both ways")
    return problems


def _weights_mb(model: Any) -> float:
    from onnx import helper

    total = 0
    for init in model.graph.initializer:
        count = 1
        for d in init.dims:
            count *= int(d)
        total += count * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total / (1 << 20)


def _dims(value_info: Any) -> list[Any]:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in value_info.type.tensor_type.shape.dim]


def dry_run(bundle_dir: str | Path, profile: BuildProfile, trt_versions: list[str] | None = None) -> DryRun:
    """Check a build of `bundle_dir` with `profile` for each TensorRT line, without TensorRT.

    trt_versions: versions or line keys ("10.3", "8.6.2"); default: the lines of the profile's
    `tensorrt` majors (all lines when it names none).
    Raises:
        BundleError: the bundle cannot be read; ValueError: a version that no line covers.
    """
    import onnx

    bundle = Bundle.load(bundle_dir)
    lines = ([trt_lines.line_for(v) for v in trt_versions] if trt_versions
             else trt_lines.lines_for_majors(profile.tensorrt))
    result = DryRun(bundle.model, profile.precision, profile.name)
    result.facts["bundle"] = str(bundle.dir)
    result.facts["tensorrt_lines"] = [line.key for line in lines]

    onnx_path = bundle.artifact(onnx_key(profile.precision), must_exist=False)
    if onnx_path is None or not Path(onnx_path).is_file():
        result.check("onnx", [f"the bundle has no {profile.precision} ONNX (make it with `edgecxr "
                              f"{'calibrate' if profile.precision == 'int8' else 'export'}`)"], "")
        return result
    model = onnx.load(str(onnx_path), load_external_data=False)
    from edgecxr.stages.export.onnx_tools import STANDARD_DOMAINS, opset_of

    opset = opset_of(model)
    ops = {n.op_type for n in model.graph.node if n.domain in STANDARD_DOMAINS}
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    weights = _weights_mb(model)
    result.facts["onnx"] = {"file": Path(onnx_path).name, "opset": opset, "nodes": len(model.graph.node),
                            "operators": sorted(ops), "weights_mb": round(weights, 1)}
    result.check("onnx", [f"custom-domain operators {custom} need TensorRT plugins"] if custom else [],
                 f"{Path(onnx_path).name}: opset {opset}, {len(model.graph.node)} nodes, "
                 f"{len(ops)} operator types, weights {weights:.1f} MB")

    restricted = check_restrictions(model)
    result.check("restrictions", restricted, "pooling, LSTM/GRU/RNN attributes against the parser's restrictions")
    for line in lines:
        problems, warnings, source = check_operators(ops, opset, line.key)
        result.warnings += warnings
        result.check(f"operators@{line.key}", problems, f"{len(ops)} operator types against {source}")
    if profile.precision == "int8":
        from edgecxr.stages.export.qdq_check import check_tensorrt_qdq

        qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
        result.check("qdq", check_tensorrt_qdq(model), f"{qdq} Q/DQ nodes: symmetric, zero point 0, per-channel weights")
    _check_io(result, model, bundle, profile)
    _check_gpu(result, profile)
    _check_memory(result, profile, weights)
    for line in lines:
        step = trt_lines.describe_path(line, profile.precision)
        step["engine"] = f"engines/{bundle.model}-{profile.precision}-<gpu>-trt<{line.key} version>" + (
            f"-dla{profile.dla_core}" if profile.dla_core is not None else "") + ".engine (+ .json sidecar)"
        step["then"] = (f"sidecar, accuracy gate on the test split (exit 3 and *.rejected.* if it fails), record in "
                        f"bundle.json; timing cache {profile.timing_cache or 'off'}")
        result.plan.append(step)
    return result


def _check_io(result: DryRun, model: Any, bundle: Bundle, profile: BuildProfile) -> None:
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    problems = []
    detail = ""
    if len(inputs) != 1:
        problems.append(f"expected one input, found {[i.name for i in inputs]}")
    else:
        dims = _dims(inputs[0])
        want = list(bundle.spec.input_shape)
        detail = f"input {inputs[0].name} {dims} -> profile batch {profile.min_batch}/{profile.opt_batch}/{profile.max_batch}"
        if len(dims) != 4 or dims[1:] != want:
            problems.append(f"input {inputs[0].name} has shape {dims}, the bundle's preprocessing makes (N, {want})")
        elif isinstance(dims[0], int) and dims[0] > 0 and not profile.min_batch == profile.max_batch == dims[0]:
            problems.append(f"the ONNX has a fixed batch of {dims[0]}; the profile asks for "
                            f"{profile.min_batch}..{profile.max_batch} (re-export with a dynamic batch)")
    outputs = [(o.name, _dims(o)) for o in model.graph.output]
    result.facts["io"] = {"inputs": [(i.name, _dims(i)) for i in inputs], "outputs": outputs}
    n_classes = len(bundle.classes)
    if not outputs or outputs[0][1][-1:] != [n_classes]:
        problems.append(f"first output {outputs[0] if outputs else None} is not the {n_classes} class probabilities")
    extra = [name for name, _ in outputs[1:]]
    if extra and extra != ["features"]:
        problems.append(f"outputs after the probabilities must be just 'features', found {extra}")
    detail += "; outputs " + ", ".join(f"{n} {d}" for n, d in outputs)
    result.check("io", problems, detail)


def _check_gpu(result: DryRun, profile: BuildProfile) -> None:
    problems = []
    for cc in profile.compute_capabilities:
        try:
            check_precision_support(profile.precision, cc, f"sm{cc.replace('.', '')}")
        except BackendUnavailableError as exc:
            problems.append(str(exc))
    ccs = ", ".join(profile.compute_capabilities) or "any"
    result.check("precision", problems, f"{profile.precision} on compute capability {ccs}")


def _check_memory(result: DryRun, profile: BuildProfile, weights_mb: float) -> None:
    need = profile.workspace_mb + weights_mb
    if profile.device_memory_mb is None:
        result.warnings.append(f"profile {profile.name!r} states no device_memory_mb: workspace not checked")
        result.check("memory", [], f"workspace {profile.workspace_mb} MB (no device memory stated)")
        return
    budget = profile.device_memory_mb * MEMORY_SHARE
    detail = (f"workspace {profile.workspace_mb} MB + weights {weights_mb:.0f} MB = {need:.0f} MB "
              f"<= {budget:.0f} MB (half of {profile.device_memory_mb} MB device memory)")
    problems = [] if need <= budget else [
        f"workspace {profile.workspace_mb} MB + weights {weights_mb:.0f} MB needs {need:.0f} MB, more than half "
        f"of the profile's {profile.device_memory_mb} MB device memory; lower --workspace-mb"]
    result.check("memory", problems, detail)


def format_dry_run(result: DryRun) -> str:
    """The text `edgecxr build --dry-run` prints."""
    lines = [f"dry run: {result.model} {result.precision} with profile {result.profile} "
             f"for TensorRT {', '.join(result.facts.get('tensorrt_lines', []))} (no TensorRT needed)"]
    for c in result.checks:
        lines.append(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']:<16} {c['detail']}")
        lines += [f"       - {p}" for p in c["problems"]]
    lines += [f"  warning: {w}" for w in result.warnings]
    for step in result.plan:
        flags = ", ".join(step["builder_precision_flags"]) or "none"
        lines.append(f"  TensorRT {step['tensorrt_line']} ({step['targets']}): "
                     f"{'strongly typed' if step['strongly_typed'] else 'weakly typed'}, network flags "
                     f"{', '.join(step['network_flags'])}, builder precision flags {flags}")
        lines += [f"      {call}" for call in step["calls"]]
        lines.append(f"      -> {step['engine']}; then {step['then']}")
    lines.append("PASS: the build would reach TensorRT" if result.ok
                 else f"FAIL: {len(result.problems)} problem(s) before TensorRT")
    return "\n".join(lines)


def raise_for_problems(result: DryRun) -> None:
    """BundleError (exit 1) with the first problem and the count, after the report was printed."""
    if not result.ok:
        more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        raise BundleError(f"dry run failed: {result.problems[0]}{more}")
