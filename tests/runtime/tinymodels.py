"""Tiny real models and bundles for runtime tests (no TensorFlow needed).

The classifier is flatten -> dense -> softmax on a 32x32x3 CoroNet-style input, built with the
ONNX helper API, so a numpy reference of the exact same computation (`reference_probs`) can check
that a runtime applied the stored preprocessing and weights, not just that it returned numbers.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecxr.core.bundle import Bundle
from edgecxr.core.metadata import META_CLASSES, META_MODEL, META_PRECISION, META_PREPROCESS
from edgecxr.core.spec import PreprocessSpec
from edgecxr.data.manifest import CLASSES_4
from edgecxr.models.coronet import CORONET_V1

SPEC: PreprocessSpec = CORONET_V1.with_size(32)
CLASSES = list(CLASSES_4)
REPO = Path(__file__).resolve().parents[2]


def weights(spec: PreprocessSpec = SPEC, n_classes: int = len(CLASSES), seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = int(np.prod(spec.input_shape))
    w = rng.normal(0, 3.0 / np.sqrt(features), size=(features, n_classes)).astype(np.float32)
    b = rng.normal(0, 0.5, size=(n_classes,)).astype(np.float32)
    return w, b


def reference_probs(batch: np.ndarray, spec: PreprocessSpec = SPEC) -> np.ndarray:
    w, b = weights(spec)
    logits = batch.reshape(batch.shape[0], -1).astype(np.float64) @ w + b
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def make_onnx(
    path: Path, spec: PreprocessSpec = SPEC, classes: list[str] = CLASSES, fp16: bool = False, metadata: bool = True
) -> Path:
    """Write the tiny classifier (input 'image' NHWC with dynamic batch, output 'probs').

    fp16=True gives an FP16 network with FP32 I/O (Cast in and out), like `edgecxr export`'s FP16 ONNX.
    """
    w, b = weights(spec, len(classes))
    h, wd, c = spec.input_shape
    dt = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    npdt = np.float16 if fp16 else np.float32
    inits = [
        numpy_helper.from_array(w.astype(npdt), "W"),
        numpy_helper.from_array(b.astype(npdt), "B"),
        numpy_helper.from_array(np.array([-1, h * wd * c], dtype=np.int64), "flat_shape"),
    ]
    nodes = []
    x = "image"
    if fp16:
        nodes.append(helper.make_node("Cast", [x], ["image_h"], to=dt))
        x = "image_h"
    nodes += [
        helper.make_node("Reshape", [x, "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs_lp" if fp16 else "probs"], axis=-1),
    ]
    if fp16:
        nodes.append(helper.make_node("Cast", ["probs_lp"], ["probs"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", h, wd, c])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(classes)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgecxr-tests")
    model.ir_version = 8
    if metadata:
        helper.set_model_props(
            model,
            {
                META_CLASSES: json.dumps(classes),
                META_PREPROCESS: json.dumps(spec.to_dict()),
                META_MODEL: "coronet",
                META_PRECISION: "fp16" if fp16 else "fp32",
            },
        )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_int8_onnx(fp32: Path, out: Path, spec: PreprocessSpec = SPEC) -> Path:
    """A real Q/DQ INT8 ONNX of the tiny model (onnxruntime's static quantizer, a few random batches)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            lo, hi = spec.output_range
            rng = np.random.default_rng(0)
            self.items = iter(
                [{"image": rng.uniform(lo, hi, (2, *spec.input_shape)).astype(np.float32)} for _ in range(4)]
            )

        def get_next(self):  # noqa: ANN201 - onnxruntime's interface
            return next(self.items, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs "consider pre-processing" advice on the root logger
    try:
        quantize_static(
            str(fp32),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            # zero points 0: the only INT8 Q/DQ TensorRT accepts
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    finally:
        root.setLevel(level)
    # the quantizer copies the FP32 file's metadata; say int8, as `edgecxr calibrate` does
    model = onnx.load(str(out))
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, META_PRECISION: "int8"})
    onnx.save(model, str(out))
    return out


def make_bundle(directory: Path, int8: bool = True, fp16: bool = True, int8_passed: bool | None = None) -> Bundle:
    """A bundle with FP32 (+ FP16, + INT8) ONNX files of the tiny model and no Keras model."""
    bundle = Bundle.create(directory, "coronet", CLASSES, SPEC)
    make_onnx(bundle.default_path("onnx_fp32"))
    bundle.set_artifact("onnx_fp32", bundle.default_path("onnx_fp32"))
    if fp16:
        make_onnx(bundle.default_path("onnx_fp16"), fp16=True)
        bundle.set_artifact("onnx_fp16", bundle.default_path("onnx_fp16"))
    if int8:
        make_int8_onnx(bundle.default_path("onnx_fp32"), bundle.default_path("onnx_int8"))
        bundle.set_artifact("onnx_int8", bundle.default_path("onnx_int8"))
    if int8_passed is not None:
        bundle.meta["gate"] = {"onnx_int8": {"passed": int8_passed, "by": "verify"}}
    bundle.save()
    return bundle


def real_images(n: int = 4) -> list[Path]:
    """A few real X-rays: the committed examples, else the shared curated set; [] when neither exists."""
    roots = [REPO / "examples" / "images", REPO.parent / "shared" / "data" / "cxr" / "images"]
    for root in roots:
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            if files:
                # spread over classes: take every k-th file
                step = max(1, len(files) // n)
                return files[::step][:n]
    return []


def broken_files(directory: Path) -> list[Path]:
    """Files `infer` must report and skip: empty, not an image, truncated JPEG."""
    directory.mkdir(parents=True, exist_ok=True)
    empty = directory / "empty.png"
    empty.write_bytes(b"")
    text = directory / "notes.png"
    text.write_text("this is not an X-ray\n")
    out = [empty, text]
    src = next(iter(real_images(1)), None)
    if src is not None:
        data = src.read_bytes()
        trunc = directory / f"truncated{src.suffix.lower()}"
        trunc.write_bytes(data[: len(data) // 3])
        out.append(trunc)
    return out


def copy_images(paths: list[Path], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(paths):
        dst = directory / f"{i:02d}_{p.name}"
        shutil.copyfile(p, dst)
        out.append(dst)
    return out
