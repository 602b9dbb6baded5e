"""Campaign family "models": tampered bundles, model files and sidecars through the CLI and the API.

A bundle or model file that is not what bundle.json recorded, or that would mislabel, must be
refused before anything is classified: one `error:` line and exit 1 on the CLI, an EdgeCXRError
from `Classifier.load` (or a per-file error for non-finite outputs) in the API. Registering such a
bundle (`edgecxr models add`, `store.add`) is refused the same way, and leaves nothing in the
models folder: a file changed after its sha256 was recorded is never hashed anew into a trusted copy.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from runtime import tinymodels

from integrity import hostile
from integrity.campaign import Case, Plan, run_case

GOOD = "good.png"


# -- bundle.json edits -----------------------------------------------------------------------------------
def _meta_edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        path = bundle / "bundle.json"
        meta = json.loads(path.read_text())
        fn(meta)
        path.write_text(json.dumps(meta, allow_nan=True))

    return apply


def _text(text: str) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        (bundle / "bundle.json").write_text(text)

    return apply


def _set(*keys: str, value: Any) -> Callable[[Path], None]:
    def fn(meta: dict[str, Any]) -> None:
        d = meta
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value

    return _meta_edit(fn)


def _drop(*keys: str) -> Callable[[Path], None]:
    def fn(meta: dict[str, Any]) -> None:
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d.pop(keys[-1], None)

    return _meta_edit(fn)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


CLASSES = tinymodels.CLASSES

BUNDLE_EDITS: dict[str, Callable[[Path], None]] = {
    "classes-reordered": _set("classes", value=[CLASSES[1], CLASSES[0], *CLASSES[2:]]),
    "classes-duplicate": _set("classes", value=[CLASSES[0], CLASSES[0], *CLASSES[2:]]),
    "classes-empty": _set("classes", value=[]),
    "classes-ints": _set("classes", value=[1, 2, 3, 4]),
    "classes-string": _set("classes", value="covid"),
    "classes-three": _set("classes", value=CLASSES[:3]),
    "classes-five": _set("classes", value=[*CLASSES, "tuberculosis"]),
    "classes-blank-name": _set("classes", value=["", *CLASSES[1:]]),
    "classes-null": _set("classes", value=None),
    "scale-nan": _set("preprocess", "scale", value=math.nan),
    "scale-inf": _set("preprocess", "scale", value=math.inf),
    "scale-zero": _set("preprocess", "scale", value=0.0),
    "scale-string": _set("preprocess", "scale", value="2"),
    "offset-nan": _set("preprocess", "offset", value=math.nan),
    "height-string": _set("preprocess", "height", value="32"),
    "height-float": _set("preprocess", "height", value=32.5),
    "height-negative": _set("preprocess", "height", value=-32),
    "height-zero": _set("preprocess", "height", value=0),
    "height-huge": _set("preprocess", "height", value=10**9),
    "height-bool": _set("preprocess", "height", value=True),
    "height-64": _set("preprocess", "height", value=64),
    "channels-2": _set("preprocess", "channels", value=2),
    "resize-bogus": _set("preprocess", "resize", value="stretchy"),
    "layout-bogus": _set("preprocess", "layout", value="NCHWX"),
    "preprocess-unknown-key": _set("preprocess", "gamma", value=2.2),
    "preprocess-missing-width": _drop("preprocess", "width"),
    "preprocess-list": _set("preprocess", value=[32, 32, 3]),
    "preprocess-null": _set("preprocess", value=None),
    "model-int": _set("model", value=5),
    "model-missing": _drop("model"),
    "format-version-string": _set("format_version", value="1"),
    "format-version-99": _set("format_version", value=99),
    "format-foreign": _set("format", value="keras-bundle"),
    "input-shape-mismatch": _set("input_shape", value=[64, 64, 3]),
    "input-shape-string": _set("input_shape", value="32x32x3"),
    "artifacts-list": _set("artifacts", value=["model.onnx"]),
    "artifact-etc-passwd": _set("artifacts", "onnx_fp32", value="../../../../etc/passwd"),
    "artifact-absolute": _set("artifacts", "onnx_fp32", value="/etc/passwd"),
    "artifact-int": _set("artifacts", "onnx_fp32", value=5),
    "artifact-outside-copy": _set("artifacts", "onnx_fp32", value="../outside.onnx"),
    "gate-list": _set("gate", value=["onnx_int8"]),
    "gate-passed-string": _set("gate", value={"onnx_int8": {"passed": "yes"}}),
    "gate-entry-string": _set("gate", value={"onnx_int8": "passed"}),
    "deep-nesting": _text(_deep(100_000)),
    "deep-nesting-in-section": _text(json.dumps({"format": "edgecxr-bundle"})[:-1] + ', "x": ' + _deep(5000) + "}"),
    "not-json": _text("{this is not json"),
    "empty-file": _text(""),
    "json-null": _text("null"),
    "json-array": _text("[]"),
    "nan-literal-shape": _text('{"format": "edgecxr-bundle", "format_version": 1, "input_shape": NaN}'),
    "binary-garbage": lambda b: (b / "bundle.json").write_bytes(bytes(range(256)) * 4),
}


# -- model file edits ---------------------------------------------------------------------------------------
def _onnx(path: Path, spec=tinymodels.SPEC, classes=CLASSES, **kw: Any) -> Path:
    return tinymodels.make_onnx(path, spec=spec, classes=classes, **kw)


def _nan_model(path: Path, op: str) -> None:
    """The tiny model with its output replaced by NaN (0/0) or Inf (log 0) of the same shape."""
    _onnx(path)
    model = onnx.load(str(path))
    g = model.graph
    g.output[0].name = "probs"
    for node in g.node:
        for i, out in enumerate(node.output):
            if out == "probs":
                node.output[i] = "probs_real"
    zero = numpy_helper.from_array(np.zeros((1, len(CLASSES)), np.float32), "zero_row")
    g.initializer.append(zero)
    g.node.append(helper.make_node("Mul", ["probs_real", "zero_row"], ["zeros"]))
    if op == "nan":
        g.node.append(helper.make_node("Div", ["zeros", "zeros"], ["probs"]))
    else:
        g.node.append(helper.make_node("Log", ["zeros"], ["probs"]))
    onnx.save(model, str(path))


def _set_meta(path: Path, key: str, value: str) -> None:
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[key] = value
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.save(model, str(path))


def _replace(name: str, maker: Callable[[Path], Any]) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        maker(bundle / name)

    return apply


def _int8_passed(apply_file: Callable[[Path], None]) -> Callable[[Path], None]:
    """Mark the INT8 ONNX as gate-passed (so `auto` picks it), then tamper with it."""

    def apply(bundle: Path) -> None:
        meta = json.loads((bundle / "bundle.json").read_text())
        meta["gate"] = {"onnx_int8": {"passed": True, "by": "verify", "split": "val", "n": 10}}
        (bundle / "bundle.json").write_text(json.dumps(meta))
        apply_file(bundle)

    return apply


def _other_weights(path: Path) -> None:
    _onnx(path)
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == "W":
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.flip(w, axis=1).copy(), "W"))
    onnx.save(model, str(path))


FILE_EDITS: dict[str, Callable[[Path], None]] = {
    "fp32-garbage": _replace("model.onnx", lambda p: p.write_bytes(b"\0garbage" * 100)),
    "fp32-truncated": _replace("model.onnx", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    "fp32-empty": _replace("model.onnx", lambda p: p.write_bytes(b"")),
    "fp32-other-weights": _replace("model.onnx", _other_weights),
    "fp32-deleted": _replace("model.onnx", lambda p: p.unlink()),
    "fp32-symlink-outside": _replace("model.onnx", lambda p: (p.unlink(), p.symlink_to(p.parent.parent / "outside.onnx"))),
    "fp32-meta-classes-reordered": _replace(
        "model.onnx", lambda p: _set_meta(p, "edgecxr.classes", json.dumps([CLASSES[1], CLASSES[0], *CLASSES[2:]]))),
    "fp32-meta-classes-ints": _replace("model.onnx", lambda p: _set_meta(p, "edgecxr.classes", "[1, 2, 3, 4]")),
    "fp32-meta-classes-not-json": _replace("model.onnx", lambda p: _set_meta(p, "edgecxr.classes", "[covid")),
    "fp32-meta-classes-deep": _replace("model.onnx", lambda p: _set_meta(p, "edgecxr.classes", _deep(100_000))),
    "fp32-meta-preprocess-other": _replace(
        "model.onnx", lambda p: _set_meta(p, "edgecxr.preprocess", json.dumps({**tinymodels.SPEC.to_dict(), "scale": 1.0}))),
    "fp32-meta-preprocess-string-size": _replace(
        "model.onnx", lambda p: _set_meta(p, "edgecxr.preprocess", json.dumps({**tinymodels.SPEC.to_dict(), "height": "x"}))),
    "fp32-input-64": _replace("model.onnx", lambda p: _onnx(p, spec=tinymodels.SPEC.with_size(64))),
    "fp32-three-classes": _replace("model.onnx", lambda p: _onnx(p, classes=CLASSES[:3])),
    "int8-is-fp32-copy": _int8_passed(lambda b: shutil.copyfile(b / "model.onnx", b / "model.int8.onnx")),
    "int8-other-weights": _int8_passed(_replace("model.int8.onnx", _other_weights)),
    "int8-garbage": _int8_passed(_replace("model.int8.onnx", lambda p: p.write_bytes(b"garbage"))),
    "int8-deleted": _int8_passed(_replace("model.int8.onnx", lambda p: p.unlink())),
}


def _bundle_case(name: str, edit: Callable[[Path], None], api: bool) -> Case:
    def build(folder: Path) -> Plan:
        bundle = folder / "bundle"
        shutil.copyfile(bundle / "model.onnx", folder / "outside.onnx")
        good = folder / GOOD
        good.write_bytes(hostile.good_png(11))
        edit(bundle)
        if not api:
            return Plan(args=["infer", "-m", str(bundle), str(good), "--json"], exit_code=1)

        def call() -> str | None:
            from edgecxr import Classifier

            with Classifier.load(bundle) as clf:
                preds = clf.predict([good])
            return f"loaded and classified: {preds[0].label}"

        from edgecxr.core.errors import EdgeCXRError

        return Plan(call=call, raises=EdgeCXRError)

    return Case("models", f"{'api' if api else 'cli'}-{name}", build)


def _output_case(kind: str, api: bool) -> Case:
    """A model whose output is NaN or Inf: a per-file error, never a label."""

    def build(folder: Path) -> Plan:
        bundle = folder / "bundle"
        good = folder / GOOD
        good.write_bytes(hostile.good_png(11))
        _nan_model(bundle / "model.onnx", kind)
        from edgecxr.core.bundle import Bundle

        b = Bundle.load(bundle)
        b.set_artifact("onnx_fp32", bundle / "model.onnx")  # re-recorded: the file is what the bundle says
        b.save()
        if not api:
            def check(result) -> str | None:
                pred = json.loads(result.stdout)["predictions"][0]
                return None if pred["label"] is None and pred["error"] else f"labelled {pred['label']}"

            return Plan(args=["infer", "-m", str(bundle), str(good), "--json"], exit_code=1, per_file=True, check=check)

        def call() -> str | None:
            from edgecxr import Classifier

            with Classifier.load(bundle, precision="fp32") as clf:
                pred = clf.predict([good])[0]
            return None if pred.label is None and pred.error else f"labelled {pred.label} {pred.top1}"

        return Plan(call=call)

    return Case("models", f"{'api' if api else 'cli'}-output-{kind}", build)


def _onnx_file_case(name: str, value: str | None, key: str = "edgecxr.classes") -> Case:
    """An ONNX file given directly (no bundle beside it) with broken edgecxr metadata."""

    def build(folder: Path) -> Plan:
        path = _onnx(folder / "loose" / "m.onnx", metadata=value is not None)
        if value is not None:
            _set_meta(path, key, value)
        good = folder / GOOD
        good.write_bytes(hostile.good_png(11))
        return Plan(args=["infer", "-m", str(path), str(good)], exit_code=1)

    return Case("models", f"cli-onnx-file-{name}", build)


def _sidecar_case(name: str, text: str | None) -> Case:
    """An engine given directly whose sidecar is missing or malformed: refused before TensorRT."""

    def build(folder: Path) -> Plan:
        engine = folder / "m.engine"
        engine.write_bytes(b"not really an engine")
        if text is not None:
            (folder / "m.engine.json").write_text(text)
        good = folder / GOOD
        good.write_bytes(hostile.good_png(11))
        return Plan(args=["infer", "-m", str(engine), str(good)], exit_code=1)

    return Case("models", f"cli-sidecar-{name}", build)


SIDECARS = {
    "missing": None,
    "not-json": "{nope",
    "array": "[]",
    "deep": _deep(100_000),
    "classes-int": json.dumps({"classes": 5, "preprocess": tinymodels.SPEC.to_dict(), "precision": "fp16"}),
    "preprocess-nan": json.dumps({"classes": CLASSES, "preprocess": {**tinymodels.SPEC.to_dict(), "scale": math.nan},
                                  "precision": "fp16"}),
    "precision-bogus": json.dumps({"classes": CLASSES, "preprocess": tinymodels.SPEC.to_dict(), "precision": "int3"}),
    "empty-object": "{}",
}

# -- `models add` of a tampered bundle: refused, nothing registered ------------------------------------------
def _with_confidence(apply_file: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """Give the bundle a confidence fit (confidence.npz, listed with its sha256), then tamper with it."""

    def apply(bundle: Path) -> None:
        from edgecxr.core.fileutil import sha256_file
        from edgecxr.runtime.confidence import FILE, SECTION, save_arrays

        dim = 8  # the tiny model has no features output: the fit loads, and is not applied
        (bundle / FILE).write_bytes(save_arrays({"means": np.zeros((len(CLASSES), dim)), "whiten": np.eye(dim)}))
        meta = json.loads((bundle / "bundle.json").read_text())
        meta[SECTION] = {"ood": {"method": "mahalanobis", "file": FILE, "sha256": sha256_file(bundle / FILE),
                                 "thresholds": {"fp32": 10.0}}}
        (bundle / "bundle.json").write_text(json.dumps(meta))
        if apply_file is not None:
            apply_file(bundle / FILE)

    return apply


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)  # a read would block for ever: refused by its kind, never opened


ADD_EDITS: dict[str, Callable[[Path], None]] = {
    **FILE_EDITS,
    "fp16-one-byte-flipped": _replace("model.fp16.onnx", lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\0")),
    "fp16-and-int8-swapped": lambda b: (os.rename(b / "model.fp16.onnx", b / "x"),
                                        os.rename(b / "model.int8.onnx", b / "model.fp16.onnx"),
                                        os.rename(b / "x", b / "model.int8.onnx")),
    "fp32-fifo": _replace("model.onnx", _fifo),
    "fp32-is-a-folder": _replace("model.onnx", lambda p: (p.unlink(), p.mkdir())),
    "confidence-replaced": _with_confidence(lambda p: p.write_bytes(p.read_bytes()[:-8] + b"\0" * 8)),
    "confidence-deleted": _with_confidence(lambda p: p.unlink()),
    "confidence-fifo": _with_confidence(_fifo),
    "confidence-outside": _with_confidence(lambda p: (shutil.move(p, p.parent.parent / p.name),
                                                      p.symlink_to(p.parent.parent / p.name))),
    "artifact-etc-passwd": BUNDLE_EDITS["artifact-etc-passwd"],
    "bundle-not-json": BUNDLE_EDITS["not-json"],
}


def _nothing_registered(models: Path) -> str | None:
    left = sorted(p.name for p in models.iterdir()) if models.is_dir() else []
    return None if set(left) <= {".bundle.lock"} else f"models folder holds {left}"


def _add_case(name: str, edit: Callable[[Path], None], api: bool) -> Case:
    def build(folder: Path) -> Plan:
        bundle = folder / "bundle"
        shutil.copyfile(bundle / "model.onnx", folder / "outside.onnx")
        edit(bundle)
        models = Path(os.environ["EDGECXR_MODELS"])
        if not api:
            return Plan(args=["models", "add", str(bundle), "--name", "mine"], exit_code=1,
                        error_has="mine not registered", check=lambda _: _nothing_registered(models))

        from edgecxr.core.errors import EdgeCXRError

        def call() -> str | None:
            from edgecxr.runtime import store

            try:
                store.add(bundle, "mine")
            except EdgeCXRError:
                if _nothing_registered(models):
                    return _nothing_registered(models)
                raise
            return f"registered: {sorted(p.name for p in (models / 'mine').iterdir())}"

        return Plan(call=call, raises=EdgeCXRError, error_has="mine not registered")

    return Case("models", f"{'api' if api else 'cli'}-add-{name}", build)


ADD_CASES = [_add_case(n, e, api) for n, e in ADD_EDITS.items() for api in (False, True)]


CASES = (
    [_bundle_case(n, e, api) for n, e in BUNDLE_EDITS.items() for api in (False, True)]
    + [_bundle_case(n, e, api) for n, e in FILE_EDITS.items() for api in (False, True)]
    + [_output_case(k, api) for k in ("nan", "inf") for api in (False, True)]
    + [
        _onnx_file_case("no-metadata", None),
        _onnx_file_case("classes-ints", "[1, 2, 3, 4]"),
        _onnx_file_case("classes-duplicate", json.dumps([CLASSES[0]] * 4)),
        _onnx_file_case("classes-deep", _deep(100_000)),
        _onnx_file_case("preprocess-not-json", "{", key="edgecxr.preprocess"),
        _onnx_file_case("preprocess-nan", json.dumps({**tinymodels.SPEC.to_dict(), "scale": math.nan}),
                        key="edgecxr.preprocess"),
    ]
    + [_sidecar_case(n, t) for n, t in SIDECARS.items()]
)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_model_case(case: Case, case_dir: Path) -> None:
    outcome, detail = run_case(case, case_dir)
    assert outcome == "clean", f"{case}: {outcome}: {detail}"


def test_untouched_bundle_is_clean(case_dir: Path) -> None:
    """The control: the same harness on an untouched bundle classifies with exit 0 (the cases can pass)."""
    case = Case("models", "control", lambda f: (
        (f / GOOD).write_bytes(hostile.good_png(11)),
        Plan(args=["infer", "-m", str(f / "bundle"), str(f / GOOD)], exit_code=0))[1])
    assert run_case(case, case_dir) == ("clean", "")


@pytest.fixture()
def models_folder(case_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = case_dir / "models"
    monkeypatch.setenv("EDGECXR_MODELS", str(folder))
    return folder


@pytest.mark.parametrize("case", ADD_CASES, ids=str)
def test_models_add_case(case: Case, case_dir: Path, models_folder: Path) -> None:
    outcome, detail = run_case(case, case_dir)
    assert outcome == "clean", f"{case}: {outcome}: {detail}"


def test_models_add_untouched_bundle_is_clean(case_dir: Path, models_folder: Path) -> None:
    """The control: the untouched bundle, with a confidence fit, registers (exit 0) and its copy classifies."""
    _with_confidence()(case_dir / "bundle")

    def build(f: Path) -> Plan:
        (f / GOOD).write_bytes(hostile.good_png(11))
        return Plan(args=["models", "add", str(f / "bundle"), "--name", "mine"], exit_code=0)

    assert run_case(Case("models", "add-control", build), case_dir) == ("clean", "")
    assert sorted(p.name for p in (models_folder / "mine").iterdir()) == [
        "bundle.json", "confidence.npz", "model.fp16.onnx", "model.int8.onnx", "model.onnx"]
    infer = Case("models", "add-control-infer", lambda f: Plan(args=["infer", "-m", "mine", str(f / GOOD)], exit_code=0))
    assert run_case(infer, case_dir) == ("clean", "")
