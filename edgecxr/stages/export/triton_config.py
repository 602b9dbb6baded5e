"""Triton model configurations as data: built as dicts, written as protobuf text, checked against the real schema.

Each `config.pbtxt` of `edgecxr export triton` is a plain dict rendered by `to_pbtxt` (no
templates to drift), then parsed back with Triton's own `ModelConfig` protobuf (tritonclient ships
the generated module as `tritonclient.grpc.model_config_pb2`) so an unknown field, a misspelled
enum or a wrong type fails here, at export, instead of when Triton loads the repository.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.core.errors import MissingDependencyError

#: ONNX TensorProto element type -> Triton data type
ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 6: "TYPE_INT32", 7: "TYPE_INT64",
                  2: "TYPE_UINT8", 3: "TYPE_INT8", 9: "TYPE_BOOL", 8: "TYPE_STRING"}

#: TensorRT dtype names as the engine sidecar writes them -> Triton data type
TRT_TO_TRITON = {"float": "TYPE_FP32", "float32": "TYPE_FP32", "half": "TYPE_FP16", "float16": "TYPE_FP16",
                 "int32": "TYPE_INT32", "int64": "TYPE_INT64", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
                 "bool": "TYPE_BOOL"}


class Enum(str):
    """A protobuf enum value: written bare (KIND_CPU), not quoted."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton sees it: dims without the batch dimension (-1: variable)."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def to_config(self, **extra: Any) -> dict[str, Any]:
        return {"name": self.name, "data_type": Enum(self.data_type), "dims": list(self.dims), **extra}


def onnx_io(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec], bool]:
    """Inputs and outputs of an ONNX file, and whether every one has a variable first (batch) dimension."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    batched = True

    def specs(values: Any) -> list[TensorSpec]:
        nonlocal batched
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            batched = batched and bool(dims) and dims[0] == -1
            out.append(TensorSpec(v.name, ONNX_TO_TRITON.get(t.elem_type, f"onnx type {t.elem_type}"), tuple(dims[1:])))
        return out

    inputs, outputs = specs(model.graph.input), specs(model.graph.output)
    return inputs, outputs, batched


def engine_io(sidecar: dict[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a TensorRT engine from its sidecar's `io` (names, shapes with batch, dtypes)."""
    io = sidecar.get("io") or {}

    def specs(rows: Any) -> list[TensorSpec]:
        return [TensorSpec(str(r["name"]), TRT_TO_TRITON.get(str(r.get("dtype", "float")).lower(), "TYPE_FP32"),
                           tuple(int(d) for d in list(r["shape"])[1:])) for r in rows or []]

    return specs(io.get("inputs")), specs(io.get("outputs"))


# ------------------------------------------------------------------------------------------------
# protobuf text format
# ------------------------------------------------------------------------------------------------
def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a double-quoted string with C-style escapes, valid protobuf text


def _render(key: str, value: Any, indent: str) -> list[str]:
    inner = indent + "  "
    if isinstance(value, dict):
        lines = [f"{indent}{key} {{"]
        for k, v in value.items():
            lines += _render(k, v, inner)
        return [*lines, f"{indent}}}"]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        lines = [f"{indent}{key} ["]
        for i, item in enumerate(value):
            body = [f"{inner}{{"]
            for k, v in item.items():
                body += _render(k, v, inner + "  ")
            body.append(f"{inner}}}" + ("," if i < len(value) - 1 else ""))
            lines += body
        return [*lines, f"{indent}]"]
    if isinstance(value, list):
        return [f"{indent}{key}: [ {', '.join(_scalar(v) for v in value)} ]"]
    return [f"{indent}{key}: {_scalar(value)}"]


def to_pbtxt(config: dict[str, Any], comment: str = "") -> str:
    """A model config dict as protobuf text (map fields are lists of {'key': k, 'value': v})."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()] if comment else []
    for key, value in config.items():
        lines += _render(key, value, "")
    return "\n".join(lines) + "\n"


def parse_pbtxt(text: str) -> Any:
    """Parse config.pbtxt text into Triton's ModelConfig message (raises on anything Triton would not read).

    Raises:
        MissingDependencyError: tritonclient (the `triton` extra) is not installed.
        google.protobuf.text_format.ParseError: the text is not a valid ModelConfig.
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise MissingDependencyError("tritonclient", "triton", "checking config.pbtxt against Triton's schema") from exc
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def map_entries(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    """{'a': 'b'} -> [{'key': 'a', 'value': 'b'}]: how a protobuf map is written in text format."""
    return [{"key": k, "value": v} for k, v in mapping.items()]
