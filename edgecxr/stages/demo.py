"""`make demo` / `python -m edgecxr.stages.demo`: the whole pipeline on a fresh machine in a few minutes.

Stages (each printed with its outcome and time):
  1. data       the curated set in ../shared/data/cxr when it is beside the checkout (1,274
                images; `--per-class N` takes a class-balanced subset of train/val), else the
                committed examples/images (12 images: enough to run every stage, far too few to
                learn anything)
  2. train      a small CoroNet (the tiny separable-conv base at 96x96, 10 epochs, Adam 1e-3 constant:
                the paper recipe at a 10x rate, which a ~50k-weight model learns fastest with) via
                edgecxr.train: about 35 s on 2 CPU cores, 75-79% test accuracy on the curated set
  3. export     ONNX FP32 + FP16 with the parity check against Keras (edgecxr.export)
  4. calibrate  INT8 Q/DQ ONNX on the `calib` split, gated before it is published (edgecxr.quantize);
                the first conv and the head stay in float (with them quantized this small model
                failed the gate: -3 pp accuracy, 94% agreement)
  5. verify     the accuracy regression gate on `test` for every artifact (edgecxr.verify)
  6. build      a TensorRT engine when TensorRT and a GPU exist (edgecxr.stages.engine.build); else the reason
  7. infer      one example image through `Classifier` (TensorRT engine or ONNX Runtime)

A model trained for ten epochs on a 96-pixel tiny network is not a diagnostic tool: its numbers
only show that the stages connect. An INT8 or FP16 model of such an undertrained network may fail the
accuracy gate; the demo then says so and goes on with the artifacts that passed, exactly as a real
deployment would refuse to publish them. Output goes to demo_out/ (replaced on every run).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecxr.core.errors import EdgeCXRError, GateFailedError
from edgecxr.core.fileutil import recorded_path

REPO = Path(__file__).resolve().parents[2]
SHARED_MANIFEST = REPO.parent / "shared" / "data" / "cxr" / "manifest.csv"
EXAMPLES_MANIFEST = REPO / "examples" / "images" / "manifest.csv"
#: layers left in float by the demo's INT8 calibration (edgecxr.quantize aliases)
KEEP_FLOAT = ("first-conv", "head")


class Stages:
    """Numbered stage printing with timings, and a record of what each stage did."""

    def __init__(self, total: int, out: Callable[[str], None] = print):
        self.total = total
        self.n = 0
        self.out = out
        self.results: dict[str, str] = {}

    def run(self, name: str, title: str, fn: Callable[[], Any], optional: bool = False) -> Any:
        """Run one stage. A failed accuracy gate never stops the demo (the artifact is simply not
        published); any other error stops it unless the stage is `optional` (the TensorRT build)."""
        self.n += 1
        self.out(f"\n[{self.n}/{self.total}] {title}")
        t0 = time.perf_counter()
        try:
            value = fn()
        except GateFailedError as exc:
            self.results[name] = f"gate failed ({time.perf_counter() - t0:.0f} s)"
            self.out(f"      gate FAILED: {exc}")
            return exc
        except EdgeCXRError as exc:
            if not optional:
                raise
            self.results[name] = f"failed: {exc}"
            self.out(f"      FAILED: {exc}; continuing without it")
            return exc
        self.results[name] = f"ok ({time.perf_counter() - t0:.0f} s)"
        self.out(f"      done in {time.perf_counter() - t0:.1f} s")
        return value

    def skip(self, name: str, title: str, reason: str) -> None:
        self.n += 1
        self.results[name] = f"skipped: {reason}"
        self.out(f"\n[{self.n}/{self.total}] {title}\n      skipped: {reason}")


def pick_data(data: str | None) -> tuple[Path, str]:
    """(manifest, description): the given one, else the curated set beside the checkout, else the examples."""
    if data:
        return Path(data), f"{data} (as given)"
    if SHARED_MANIFEST.is_file():
        return SHARED_MANIFEST, f"{SHARED_MANIFEST} (curated set, 1,274 images)"
    if EXAMPLES_MANIFEST.is_file():
        return EXAMPLES_MANIFEST, f"{EXAMPLES_MANIFEST} (12 committed example images)"
    raise EdgeCXRError("no data: neither ../shared/data/cxr/manifest.csv nor examples/images/manifest.csv exists")


def _demo_gates(manifest: Path, log: Callable[[str], None]) -> Any:
    """The default gates, unless the data has no image of some class at all (the committed examples
    have no COVID image): then the COVID and class-coverage gates cannot be met and are turned off,
    saying so, so that the demo still shows every stage."""
    from edgecxr.data.manifest import CLASSES_4, read_manifest
    from edgecxr.stages.gate.config import Gates

    labels = {r.label for r in read_manifest(manifest)}
    absent = [c for c in CLASSES_4 if c not in labels]
    if not absent:
        return Gates()
    log(f"      no {', '.join(absent)} images in this data: the COVID and class-coverage gates are off for the demo")
    return Gates(covid_sensitivity_not_lower=False, require_all_classes=False)


def run_demo(
    out: str | Path = "demo_out",
    data: str | None = None,
    epochs: int = 10,
    input_size: int = 96,
    per_class: int | None = None,
    lr: float = 1e-3,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage; returns {'stages': {...}, 'prediction': ..., 'backend': ...}.

    per_class: train/val images per class (class-balanced subset; None: all).
    """
    from edgecxr.core.bundle import Bundle

    out = Path(out)
    manifest, described = pick_data(data)
    bundle_dir = out / "coronet"
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = Stages(7, log)
    st.run("data", "data", lambda: log(f"      {described}"))
    gates = _demo_gates(manifest, log)

    def train() -> Any:
        from edgecxr.stages.train.config import TrainConfig
        from edgecxr.stages.train.run import train as train_fn

        cfg = TrainConfig(
            model="coronet",
            data=str(manifest),
            out=str(bundle_dir),
            epochs=epochs,
            batch_size=16,
            lr=lr,
            recipe="paper",
            input_size=input_size,
            tiny=True,
            limit_per_class=per_class,
            seed=0,
        )
        log(f"      CoroNet, tiny base at {input_size}x{input_size}, {epochs} epoch(s)")
        return train_fn(cfg, log=sys.stdout)

    st.run("train", "train a small CoroNet (edgecxr.train)", train)
    bundle = Bundle.load(bundle_dir)

    def export() -> Any:
        from edgecxr.stages.export.onnx import export_bundle

        section = export_bundle(bundle, manifest=manifest, parity_images=32, progress=False)
        for key in ("onnx_fp32", "onnx_fp16"):
            path = Bundle.load(bundle_dir).artifact(key, must_exist=False)
            log(f"      {key}: {path if path else 'not published'}")
        return section

    st.run("export", "export ONNX FP32 + FP16, parity vs Keras (edgecxr.export)", export)

    def calibrate() -> Any:
        from edgecxr.stages.export.int8 import calibrate_bundle

        b = Bundle.load(bundle_dir)
        log(f"      keeping {', '.join(KEEP_FLOAT)} in float (the usual INT8 practice for small CNNs)")
        section = calibrate_bundle(
            b, manifest, keep_float=KEEP_FLOAT, calib_manifest_out=out / "calibration", progress=False, gates=gates
        )
        log(f"      onnx_int8: {Bundle.load(bundle_dir).artifact('onnx_int8')}")
        return section

    st.run("calibrate", "calibrate INT8 Q/DQ on the calib split, gated (edgecxr.quantize)", calibrate)

    def verify() -> Any:
        from edgecxr.stages.gate.report import format_text
        from edgecxr.stages.gate.run import run_gate

        b = Bundle.load(bundle_dir)
        result = run_gate(
            b, manifest, "test", gates=gates, bootstrap=0, progress=False, write=True, raise_on_fail=False
        )
        for line in format_text(result).splitlines():
            log(f"      {line}")
        if not result.passed:
            result.raise_for_failures()
        return result

    st.run("verify", "accuracy regression gate on the test split (edgecxr.verify)", verify)
    _build_stage(st, bundle_dir, manifest, log)

    example = _example_image(manifest)

    def infer() -> Any:
        from edgecxr.runtime.classifier import Classifier

        with Classifier.load(bundle_dir) as clf:
            log(f"      {clf.describe()}")
            (pred,) = clf.predict([example])
            info = dict(clf.backend_info)
        if pred.ok:
            probs = ", ".join(f"{c} {p:.3f}" for c, p in pred.top_k(len(pred.probabilities)))
            log(f"      {example.name}: {pred.label} ({pred.top1:.3f}); {probs}")
            log(f"      preprocess {pred.preprocess_ms:.1f} ms, inference {pred.inference_ms:.1f} ms")
        else:
            log(f"      {example.name}: {pred.error or f'rejected: {pred.reason}'}")
        return pred, info

    pred, info = st.run("infer", f"classify {example.name} (edgecxr.Classifier)", infer)
    log("\nsummary:")
    for name, outcome in st.results.items():
        log(f"  {name:<10} {outcome}")
    exe = Path(sys.executable).parent / "edgecxr"  # the venv's command: a bare `edgecxr` is not on PATH
    log(f"bundle: {bundle_dir}   try: {recorded_path(exe)} infer -m {recorded_path(bundle_dir)} "
        f"{recorded_path(example.parent)}")
    return {"stages": st.results, "prediction": pred.to_dict(), "backend": info, "bundle": str(bundle_dir)}


def _build_stage(st: Stages, bundle_dir: Path, manifest: Path, log: Callable[[str], None]) -> None:
    from edgecxr.runtime.backends import backends

    title = "build a TensorRT engine (edgecxr.stages.engine.build)"
    reason = backends()["tensorrt"].availability()
    if reason:
        st.skip("build", title, f"{reason}; inference uses ONNX Runtime")
        return

    def build() -> Any:
        from edgecxr.core.bundle import Bundle
        from edgecxr.stages.engine.build import build_engine
        from edgecxr.stages.engine.profile import resolve_profile

        b = Bundle.load(bundle_dir)
        precision = "int8" if b.artifact("onnx_int8", must_exist=False) and b.gate_verdict("onnx_int8") else "fp16"
        return build_engine(bundle_dir, resolve_profile(None, precision=precision, batch="1-8"), manifest=manifest, log=log)

    st.run("build", title, build, optional=True)


def _example_image(manifest: Path) -> Path:
    """A test-split image of the data used (never seen in training), else the first example image."""
    from edgecxr.data.manifest import read_manifest

    records = [r for r in read_manifest(manifest) if r.split == "test"]
    if records:
        return records[0].path
    return sorted((REPO / "examples" / "images").rglob("*.png"))[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgecxr.stages.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--data", help="manifest to use instead of ../shared/data/cxr or examples/images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--per-class", type=int, default=None, help="train/val images per class (default: all)"
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        run_demo(args.out, args.data, args.epochs, args.input_size, args.per_class, args.lr)
    except EdgeCXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
