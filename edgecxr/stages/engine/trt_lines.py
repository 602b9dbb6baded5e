"""The TensorRT lines edgecxr supports, and the code path each one takes, as data.

Why a table: the build and the runner go through Polygraphy, which hides most API changes from
TensorRT 8.6 to 11, but three things still differ by version and decide what the build does:
whether the network is strongly typed (10/11: precision comes from the FP16 or Q/DQ ONNX), which
builder precision flags are set (8.6 only; TensorRT 11 removed FP16/INT8 flags), and which
network-creation flag Polygraphy sets (EXPLICIT_BATCH before 10). Keeping that in one table lets
`edgecxr build --dry-run` print the path for a version without TensorRT installed, and lets the
contract tests (tests/engine/test_trt_contract.py) check every TensorRT name a path uses against
that version's real bindings wheel on a CPU-only machine.

`names_used` lists the TensorRT names our code and the Polygraphy loaders/runner we call touch on a
path (read from polygraphy 0.53.6: backend/trt/loader.py, config.py, runner.py). Names Polygraphy
only uses behind `hasattr`/version guards are left out: their absence is handled there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The Polygraphy release the code was written and contract-tested against (pyproject's `gpu` extra).
POLYGRAPHY_VERSION = "0.53.6"


@dataclass(frozen=True)
class TrtLine:
    """One supported TensorRT line and how edgecxr builds and runs engines there."""

    key: str  #: short name: "8.6", "10.3", "10.x", "11.x"
    low: tuple[int, int]  #: first version of the line (inclusive)
    high: tuple[int, int]  #: first version after it (exclusive)
    strongly_typed: bool  #: NetworkFromOnnxPath(strongly_typed=...): precision from the ONNX
    network_flags: tuple[str, ...]  #: NetworkDefinitionCreationFlag members Polygraphy sets
    builder_flags: dict[str, tuple[str, ...]]  #: precision -> BuilderFlag members (weakly typed only)
    targets: str  #: which machines run this line
    wheel: str  #: pip requirement of the line's Python bindings (contract tests read its names)
    notes: str = ""
    dla_flags: tuple[str, ...] = field(default=("PREFER_PRECISION_CONSTRAINTS",))  #: Polygraphy's DLA flags

    def matches(self, version: str) -> bool:
        return self.low <= version_tuple(version) < self.high


LINES: tuple[TrtLine, ...] = (
    TrtLine(
        "8.6", (8, 6), (9, 0), strongly_typed=False, network_flags=("EXPLICIT_BATCH",),
        builder_flags={"fp16": ("FP16",), "int8": ("INT8",)},
        targets="Pascal GTX 10xx (sm61: last line supporting it), JetPack 6.0 (TensorRT 8.6.2)",
        wheel="tensorrt-bindings==8.6.1",
        notes="weakly typed: FP16/INT8 builder flags; the Q/DQ ONNX needs no calibrator",
    ),
    TrtLine(
        "10.3", (10, 0), (10, 4), strongly_typed=True, network_flags=("STRONGLY_TYPED",), builder_flags={},
        targets="JetPack 6.1 / 6.2 (TensorRT 10.3), x86-64 10.0-10.3",
        wheel="tensorrt-cu12-bindings==10.3.0",
    ),
    TrtLine(
        "10.x", (10, 4), (11, 0), strongly_typed=True, network_flags=("STRONGLY_TYPED",), builder_flags={},
        targets="x86-64 workstations with a current TensorRT 10 (Turing sm75 and newer)",
        wheel="tensorrt-cu12-bindings==10.16.1.11",
    ),
    TrtLine(
        "11.x", (11, 0), (12, 0), strongly_typed=True, network_flags=("STRONGLY_TYPED",), builder_flags={},
        targets="x86-64 with TensorRT 11 (precision flags and INT8 calibrators removed)",
        wheel="tensorrt-cu12-bindings==11.4.0.106",
        dla_flags=(),  # Polygraphy sets PREFER_PRECISION_CONSTRAINTS only below 11.0
    ),
)
BY_KEY: dict[str, TrtLine] = {line.key: line for line in LINES}

# -- the TensorRT names each step touches (ours and Polygraphy's) ----------------------------------
_PARSE = (
    "__version__", "Builder", "Logger", "create_network", "NetworkDefinitionCreationFlag",
    "init_libnvinfer_plugins", "OnnxParser", "parse_from_file", "num_errors", "get_error", "desc",
    "num_inputs", "get_input", "num_outputs", "get_output", "shape", "dtype", "name",
)
_CONFIG = (
    "create_builder_config", "BuilderFlag", "TF32", "set_flag", "clear_flag", "create_optimization_profile",
    "set_shape", "add_optimization_profile", "set_memory_pool_limit", "MemoryPoolType", "WORKSPACE",
    "ProfilingVerbosity", "DETAILED", "profiling_verbosity", "create_timing_cache", "set_timing_cache",
)
_BUILD = ("build_serialized_network", "get_timing_cache", "combine", "serialize", "Runtime", "deserialize_cuda_engine")
_DLA = ("num_DLA_cores", "default_device_type", "DeviceType", "DLA", "DLA_core", "GPU_FALLBACK")
_RUN = (
    "Runtime", "deserialize_cuda_engine", "ICudaEngine", "IExecutionContext", "create_execution_context",
    "num_io_tensors", "get_tensor_name", "get_tensor_mode", "TensorIOMode", "INPUT", "OUTPUT", "get_tensor_shape",
    "get_tensor_dtype", "get_tensor_profile_shape", "is_shape_inference_io", "get_tensor_format", "TensorFormat",
    "LINEAR", "HWC", "CHW16", "set_input_shape", "get_tensor_address", "set_tensor_address", "IOutputAllocator",
    "set_output_allocator", "reallocate_output", "notify_shape", "execute_async_v3", "nptype",
)
#: Polygraphy's TensorRT logger (get_trt_logger), used by every loader and the runner
_LOGGER = ("Logger", "ILogger", "ERROR", "INFO", "INTERNAL_ERROR", "VERBOSE", "WARNING")
#: weakly typed INT8 (8.6): CreateConfig looks for Q/DQ layers before deciding it needs no calibrator
_INT8_WEAK = ("LayerType", "QUANTIZE", "DEQUANTIZE")


def version_tuple(version: str) -> tuple[int, int]:
    """'10.3.0.26' -> (10, 3); ValueError on text that is not a version."""
    parts = str(version).strip().split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ValueError(f"{version!r} is not a TensorRT version like 10.3") from None


def line_for(version: str) -> TrtLine:
    """The supported line a TensorRT version belongs to ('10.3.0' -> 10.3); ValueError if none."""
    if version in BY_KEY:  # a line key: "10.x", "11.x"
        return BY_KEY[version]
    for line in LINES:
        if line.matches(version):
            return line
    known = ", ".join(line.key for line in LINES)
    raise ValueError(f"TensorRT {version} is not a supported line (supported: {known})")


def lines_for_majors(majors: tuple[int, ...]) -> list[TrtLine]:
    """Lines a profile's `tensorrt = [...]` majors cover (all lines when it names none)."""
    return [line for line in LINES if not majors or line.low[0] in majors]


def names_used(line: TrtLine, precision: str | None = None, dla: bool = False) -> dict[str, tuple[str, ...]]:
    """TensorRT names a code path touches, grouped by step (logger, parse, config, build, dla, run).

    Without `precision`, both precisions' names are included (what the contract tests check).
    """
    precisions = [precision] if precision else list(line.builder_flags) or ["fp16", "int8"]
    flags = tuple(dict.fromkeys(f for p in precisions for f in line.builder_flags.get(p, ())))
    config = _CONFIG + flags
    if not line.strongly_typed and "int8" in precisions:
        config += _INT8_WEAK
    steps = {
        "logger": _LOGGER,
        "parse": _PARSE + line.network_flags,
        "config": config,
        "build": _BUILD,
        "run": _RUN,
    }
    if dla or precision is None:
        steps["dla"] = _DLA + line.dla_flags
    return steps


def all_names(line: TrtLine) -> set[str]:
    return {name for names in names_used(line).values() for name in names}


def describe_path(line: TrtLine, precision: str) -> dict[str, object]:
    """What the build does on this line, for `--dry-run` and the sidecar's reader."""
    flags = list(line.builder_flags.get(precision, ()))
    return {
        "tensorrt_line": line.key,
        "targets": line.targets,
        "strongly_typed": line.strongly_typed,
        "network_flags": list(line.network_flags),
        "builder_precision_flags": flags,
        "precision_from": "builder flags on the ONNX" if flags else "the ONNX's types (strongly typed network)",
        "polygraphy": POLYGRAPHY_VERSION,
        "calls": [
            f"NetworkFromOnnxPath(onnx, strongly_typed={line.strongly_typed})",
            "CreateConfig(tf32=False, " + "".join(f"{f.lower()}=True, " for f in flags)
            + "profiles=[Profile(min/opt/max batch)], memory_pool_limits={WORKSPACE}, load_timing_cache[, use_dla])",
            "EngineFromNetwork(network, config, save_timing_cache=cache)",
            "SaveEngine(engine, candidate path) -> accuracy gate -> publish",
        ],
    }
