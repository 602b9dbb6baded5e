"""`edgecxr export triton`: a Triton Inference Server model repository of edgecxr bundles.

For a bundle named NAME (`coronet`, `cnn-lstm` or any registered or path bundle) it writes:

    REPO/NAME/                 ONNX Runtime backend, KIND_CPU: preprocessed tensor in, probabilities out
         config.pbtxt, labels.txt, 1/model.onnx
                               (flavour "python": the Python backend running that file through
                               ONNX Runtime, 1/model.py beside it: stages/export/triton_onnx.py)
    REPO/NAME_trt/             TensorRT plan, KIND_GPU (only when the bundle holds an engine)
         config.pbtxt, labels.txt, 1/model.plan  (one plan per compute capability: cc_model_filenames)
    REPO/NAME_preprocess/      Python backend, KIND_CPU: encoded PNG/JPEG (DICOM) bytes in, tensor out
         config.pbtxt, 1/model.py, 1/preprocess.json
    REPO/NAME_image/           ensemble NAME_preprocess -> NAME: clients send encoded files
    REPO/NAME_trt_image/       ensemble NAME_preprocess -> NAME_trt (with an engine)
    REPO/edgecxr-triton.json   what was exported from where: artifact, sha256, gate verdict, why

NAME takes the same tensor under the same input and output names as `edgecxr serve`'s
`/v2/models/NAME/infer` (the ONNX graph's own names), so a client written against one workstation
moves to a Triton cluster unchanged.

Which ONNX: Triton's onnxruntime models run on the server's CPU (KIND_CPU), a machine edgecxr does
not see at export. The choice is `runtime.select.choose_onnx` on a CPU with integer dot products
(server CPUs since Cascade Lake / Zen 4 have VNNI): the INT8 Q/DQ ONNX if it passed the accuracy
gate, else the FP32 ONNX, else a gated FP16 ONNX (the CNN-LSTM reference ships only FP16). A file
that failed or never went through the gate is not exported. `precision=` overrides the choice.

Engines are exported as they are: a plan runs only on the GPU model and TensorRT version that built
it (the sidecar says which; edgecxr-triton.json repeats it), so Triton must use that TensorRT.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import ArgumentError, BundleError, MissingDependencyError
from edgecxr.core.fileutil import read_json, sha256_file, write_json
from edgecxr.core.metadata import read_sidecar, verify_engine
from edgecxr.stages.export import triton_onnx, triton_preprocess
from edgecxr.stages.export.triton_config import (
    Enum,
    TensorSpec,
    engine_io,
    map_entries,
    onnx_io,
    parse_pbtxt,
    to_pbtxt,
)

#: provenance file at the repository root (Triton loads only subdirectories as models)
MANIFEST = "edgecxr-triton.json"

#: the encoded-file input of the preprocessing model and of the ensembles
FILE_INPUT = "image_file"

#: model version written; the configs serve exactly this version
VERSION = 1

#: how NAME runs its ONNX: Triton's onnxruntime backend, or the Python backend with ONNX Runtime inside
#: (for a Triton without the onnxruntime backend, such as the nvidia-pytriton wheel's CPU-only server)
FLAVOURS = {"onnxruntime": {"platform": "onnxruntime_onnx"}, "python": {"backend": "python"}}


@dataclass(frozen=True)
class TritonOptions:
    """How the repository's models are batched and scheduled.

    Attributes:
        max_batch_size: largest batch Triton forms (TensorRT: at most the engine profile's max_batch).
        max_queue_delay_us: how long dynamic batching waits to fill a batch (microseconds).
        cpu_instances: ONNX Runtime model instances (each runs ONNX Runtime over all cores).
        preprocess_instances: Python-backend instances decoding files (one process each).
        precision: ONNX precision to export instead of the gated choice (fp32, fp16, int8).
        engines: also export the bundle's TensorRT engines.
        flavour: "onnxruntime" (Triton's onnxruntime backend) or "python" (FLAVOURS).
    """

    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    cpu_instances: int = 1
    preprocess_instances: int = 2
    precision: str | None = None
    engines: bool = True
    flavour: str = "onnxruntime"

    def __post_init__(self) -> None:
        from edgecxr.core.artifacts import MAX_BATCH

        if self.flavour not in FLAVOURS:
            raise ArgumentError(f"flavour must be one of {', '.join(FLAVOURS)}, got {self.flavour!r}", params=("flavour",))

        if not 1 <= self.max_batch_size <= MAX_BATCH:
            raise ArgumentError(f"max_batch_size must be in 1..{MAX_BATCH}, got {self.max_batch_size}",
                                params=("max_batch_size",))
        for name in ("cpu_instances", "preprocess_instances"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"{name} must be >= 1", params=(name,))
        if self.max_queue_delay_us < 0:
            raise ArgumentError("max_queue_delay_us must be >= 0", params=("max_queue_delay_us",))


def export_triton(models: Sequence[str | Path], out: str | Path, options: TritonOptions | None = None,
                  replace: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the Triton models of each bundle into the repository `out`; returns the manifest entries.

    Everything is written into a staging folder beside `out`, checked (every config.pbtxt parsed
    by Triton's ModelConfig protobuf, ONNX and engine IO against the configs), and only then moved
    into `out`. A model folder that already exists there is kept unless `replace`.

    Raises:
        ArgumentError: no model, two bundles with one name, or a model folder exists (without replace).
        BundleError: no gated ONNX, a file whose sha256 differs from its bundle's record.
        MissingDependencyError: tritonclient (extra `triton`) is missing to check the configs.
    """
    from edgecxr.runtime import store

    options = options or TritonOptions()
    say = log or (lambda _msg: None)
    out = Path(out)
    if not models:
        raise ArgumentError("give at least one model", params=("models",))
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{out} exists and is not a folder", params=("out",))
    bundles: dict[str, Bundle] = {}
    for model in models:
        bundle = Bundle.load(store.resolve(model))
        name = bundle.model
        if name in bundles:
            raise ArgumentError(f"two bundles are named {name!r} ({bundles[name].dir}, {bundle.dir})", params=("models",))
        bundles[name] = bundle
    stage = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        entries = {name: _write_bundle(bundle, name, stage, options, say) for name, bundle in bundles.items()}
        problems = check_repository(stage)
        if problems:
            raise BundleError("the Triton repository failed its own checks: " + "; ".join(problems))
        folders = sorted(p.name for p in stage.iterdir() if p.is_dir())
        clash = [f for f in folders if (out / f).exists()]
        if clash and not replace:
            raise ArgumentError(f"{out} already holds {', '.join(clash)}; refusing to replace them unless allowed",
                                params=("replace",))
        out.mkdir(parents=True, exist_ok=True)
        for folder in folders:
            _move_into_place(stage / folder, out / folder, stage)
        manifest_path = out / MANIFEST
        manifest = read_json(manifest_path) if manifest_path.is_file() else {}
        manifest.setdefault("models", {}).update(entries)
        manifest["format"] = "edgecxr-triton/1"
        write_json(manifest_path, manifest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return entries


def _move_into_place(new: Path, final: Path, stage: Path) -> None:
    """Rename `new` to `final`; an existing `final` is moved aside first and removed only afterwards."""
    old = stage / f".old-{final.name}"
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def choose_onnx_for_triton(bundle: Bundle, precision: str | None) -> Any:
    """The ONNX a Triton CPU instance runs: gated INT8, else FP32, else gated FP16 (see the module docstring)."""
    from edgecxr.runtime.select import choose_onnx

    choice = choose_onnx(bundle, precision, cuda=False, int8_fast=True)
    verdict = bundle.gate_verdict(f"onnx_{choice.precision}")
    if choice.precision != "fp32" and verdict is not True:  # asked for by precision: still only a gated file
        why = "failed the accuracy gate" if verdict is False else "was never checked by the accuracy gate"
        raise BundleError(f"{choice.path}: this {choice.precision} ONNX {why}; a server gets only gated models "
                          f"(`edgecxr verify -m {bundle.dir}`)", params=("precision",))
    return choice


def _write_bundle(bundle: Bundle, name: str, repo: Path, options: TritonOptions,
                  say: Callable[[str], None]) -> dict[str, Any]:
    from edgecxr.runtime import store

    choice = choose_onnx_for_triton(bundle, options.precision)
    sha = store.verify_artifact(bundle, choice.path)
    inputs, outputs, batched = onnx_io(choice.path)
    if not batched or len(inputs) != 1 or not outputs:
        raise BundleError(f"{choice.path}: Triton batching needs one input and outputs with a variable first dimension")
    _classifier(repo / name, FLAVOURS[options.flavour], inputs, outputs, bundle.classes, options.max_batch_size,
                options, kind="KIND_CPU", count=options.cpu_instances,
                comment=f"{bundle.model}: {choice.precision} ONNX {choice.path.name} ({choice.reason})")
    shutil.copyfile(choice.path, repo / name / str(VERSION) / "model.onnx")
    if options.flavour == "python":
        shutil.copyfile(triton_onnx.__file__, repo / name / str(VERSION) / "model.py")
    if sha is not None and sha256_file(repo / name / str(VERSION) / "model.onnx") != sha:
        raise BundleError(f"{choice.path}: the copy in the repository differs from the original")
    say(f"{name}: {choice.precision} ONNX on onnxruntime ({options.flavour} backend), KIND_CPU ({choice.reason})")
    entry: dict[str, Any] = {
        "bundle": str(bundle.dir), "classes": bundle.classes, "preprocess": bundle.spec.to_dict(),
        "onnx": {"model": name, "file": choice.path.name, "precision": choice.precision, "sha256": sha,
                 "why": choice.reason, "gate": bundle.gate_verdicts().get(f"onnx_{choice.precision}"),
                 "flavour": options.flavour},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    targets = {name: options.max_batch_size}
    engines = _usable_engines(bundle) if options.engines else []
    if engines:
        entry["tensorrt"] = _write_engines(bundle, name, engines, repo, options, say)
        targets[f"{name}_trt"] = min(options.max_batch_size, *(int((r["profile"] or {}).get("max_batch", 1))
                                                             for r in entry["tensorrt"]))
    _preprocess_model(repo / f"{name}_preprocess", bundle, inputs[0], options)
    for target, max_batch in targets.items():
        # an ensemble may not batch more than the model it feeds (a TensorRT profile may allow fewer)
        _ensemble(repo / f"{target}_image", f"{name}_preprocess", target, inputs[0], outputs, max_batch)
    entry["models"] = [*targets, f"{name}_preprocess", *(f"{t}_image" for t in targets)]
    from edgecxr.core.version import __version__

    entry["edgecxr_version"] = __version__
    return entry


def _usable_engines(bundle: Bundle) -> list[tuple[Path, dict[str, Any]]]:
    """The bundle's engines with a sidecar, not failed by the gate, whose sha256 matches; best first per GPU."""
    verdicts = bundle.gate_verdicts()
    found = []
    for rel in bundle.meta.get("engines") or {}:
        path = bundle.inside(rel, f"engines.{rel}")
        if not path.is_file():
            raise BundleError(f"{path}: bundle.json lists this engine but the file is missing")
        side = read_sidecar(path)
        if verdicts.get(f"engine:{path.name}", {}).get("passed") is False:
            continue
        found.append((path, side))
    rank = {False: 0, True: 1}
    found.sort(key=lambda e: (rank[verdicts.get(f"engine:{e[0].name}", {}).get("passed") is True],
                              e[1].get("precision") == "int8", str(e[1].get("built_at", ""))), reverse=True)
    return found


def _write_engines(bundle: Bundle, name: str, engines: list[tuple[Path, dict[str, Any]]], repo: Path,
                   options: TritonOptions, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """NAME_trt: the best engine per compute capability (Triton picks by the GPU's; cc_model_filenames)."""
    by_cc: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, side in engines:
        by_cc.setdefault(str((side.get("gpu") or {}).get("compute_capability")), (path, side))
    folder = repo / f"{name}_trt"
    first_io = engine_io(next(iter(by_cc.values()))[1])
    max_batch = min([options.max_batch_size, *(int((s.get("profile") or {}).get("max_batch", 1)) for _, s in by_cc.values())])
    files, rows = {}, []
    for cc, (path, side) in by_cc.items():
        if engine_io(side) != first_io:
            raise BundleError(f"{path}: its inputs/outputs differ from the other engines' ({first_io})")
        filename = "model.plan" if len(by_cc) == 1 else f"model_sm{cc.replace('.', '')}.plan"
        files[cc] = filename
        rows.append({"file": path.name, "plan": filename, "sha256": verify_engine(path, side),
                     "precision": side.get("precision"), "gpu": side.get("gpu"), "tensorrt": side.get("tensorrt"),
                     "profile": side.get("profile")})
    extra = {"cc_model_filenames": map_entries(files)} if len(by_cc) > 1 else {}
    inputs, outputs = first_io
    _classifier(folder, {"platform": "tensorrt_plan"}, inputs, outputs, bundle.classes, max_batch, options, kind="KIND_GPU",
                count=1, extra=extra, comment="TensorRT " + ", ".join(
                    f"{r['precision']} plan for {(r['gpu'] or {}).get('name')} with TensorRT {r['tensorrt']}" for r in rows))
    for cc, (path, _side) in by_cc.items():
        shutil.copyfile(path, folder / str(VERSION) / files[cc])
    say(f"{name}_trt: {len(rows)} TensorRT plan(s), KIND_GPU, max batch {max_batch}")
    return rows


def _common(max_batch: int) -> dict[str, Any]:
    return {"max_batch_size": max_batch,
            "version_policy": {"specific": {"versions": [VERSION]}}}


def _classifier(folder: Path, runs_on: dict[str, str], inputs: list[TensorSpec], outputs: list[TensorSpec],
                classes: list[str], max_batch: int, options: TritonOptions, kind: str, count: int,
                comment: str, extra: dict[str, Any] | None = None) -> None:
    (folder / str(VERSION)).mkdir(parents=True)
    (folder / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
    warmup = {"name": "zeros", "batch_size": 1,
              "inputs": map_entries({t.name: {"data_type": Enum(t.data_type), "dims": list(t.dims), "zero_data": True}
                                     for t in inputs})}
    config = {
        "name": folder.name, **runs_on, **_common(max_batch),
        "input": [t.to_config() for t in inputs],
        "output": [t.to_config(label_filename="labels.txt") if i == 0 else t.to_config() for i, t in enumerate(outputs)],
        "instance_group": [{"count": count, "kind": Enum(kind)}],
        "dynamic_batching": {"max_queue_delay_microseconds": options.max_queue_delay_us},
        "model_warmup": [warmup],
        **(extra or {}),
    }
    (folder / "config.pbtxt").write_text(to_pbtxt(config, f"written by edgecxr export triton\n{comment}"))


def _preprocess_model(folder: Path, bundle: Bundle, tensor: TensorSpec, options: TritonOptions) -> None:
    from dataclasses import asdict

    from edgecxr.data.limits import DEFAULT_LIMITS
    from edgecxr.data.raster import REDUCED_DECODE_MARGIN

    version = folder / str(VERSION)
    version.mkdir(parents=True)
    shutil.copyfile(triton_preprocess.__file__, version / "model.py")
    write_json(version / triton_preprocess.CONFIG_FILE, {
        "model": bundle.model, "classes": bundle.classes, "preprocess": bundle.spec.to_dict(),
        "limits": asdict(DEFAULT_LIMITS), "reduced_decode_margin": REDUCED_DECODE_MARGIN,
    })
    config = {
        "name": folder.name, "backend": "python", **_common(options.max_batch_size),
        "input": [{"name": FILE_INPUT, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [tensor.to_config()],
        "instance_group": [{"count": options.preprocess_instances, "kind": Enum("KIND_CPU")}],
        "dynamic_batching": {"max_queue_delay_microseconds": options.max_queue_delay_us},
    }
    (folder / "config.pbtxt").write_text(to_pbtxt(config, f"written by edgecxr export triton\n{bundle.spec.id}: "
                                                          "encoded PNG/JPEG (DICOM with edgecxr installed) -> tensor"))


def _ensemble(folder: Path, preprocess: str, model: str, tensor: TensorSpec, outputs: list[TensorSpec],
              max_batch: int) -> None:
    (folder / str(VERSION)).mkdir(parents=True)  # Triton wants a version folder, even an empty one
    steps = [
        {"model_name": preprocess, "model_version": -1, "input_map": map_entries({FILE_INPUT: FILE_INPUT}),
         "output_map": map_entries({tensor.name: "preprocessed"})},
        {"model_name": model, "model_version": -1, "input_map": map_entries({tensor.name: "preprocessed"}),
         "output_map": map_entries({t.name: t.name for t in outputs})},
    ]
    config = {
        "name": folder.name, "platform": "ensemble", **_common(max_batch),
        "input": [{"name": FILE_INPUT, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [t.to_config() for t in outputs],
        "ensemble_scheduling": {"step": steps},
    }
    (folder / "config.pbtxt").write_text(to_pbtxt(config, f"written by edgecxr export triton\n{preprocess} -> {model}"))


# ------------------------------------------------------------------------------------------------
# Checks of a written repository
# ------------------------------------------------------------------------------------------------
def check_repository(repo: str | Path) -> list[str]:
    """Problems of a repository: configs Triton's protobuf refuses, IO that differs from the model files.

    Checks every `*/config.pbtxt` (parsed as `ModelConfig`), its name against its folder, the
    version folder, an ONNX model's inputs/outputs (names, types, dims, variable batch) against the
    config, labels files, the Python model's files, and that each ensemble step names a model of
    the repository and tensors that model has. Returns [] when all is well.
    """
    repo = Path(repo)
    configs, problems = {}, []
    for path in sorted(repo.glob("*/config.pbtxt")):
        try:
            configs[path.parent.name] = parse_pbtxt(path.read_text())
        except MissingDependencyError:
            raise
        except Exception as exc:  # noqa: BLE001 - ParseError and friends, reported per file
            problems.append(f"{path}: {' '.join(str(exc).split())}")
    for name, cfg in configs.items():
        folder = repo / name
        if cfg.name != name:
            problems.append(f"{folder}/config.pbtxt: name {cfg.name!r} is not its folder's")
        if not (folder / str(VERSION)).is_dir():
            problems.append(f"{folder}: no version folder {VERSION}")
        problems += [f"{folder}: labels file {o.label_filename} missing" for o in cfg.output
                     if o.label_filename and not (folder / o.label_filename).is_file()]
        version = folder / str(VERSION)
        if cfg.platform == "onnxruntime_onnx":
            problems += _check_onnx(version / "model.onnx", cfg)
        elif cfg.backend == "python" and (version / triton_onnx.MODEL_FILE).exists():  # flavour "python"
            problems += _check_onnx(version / triton_onnx.MODEL_FILE, cfg)
            problems += [] if (version / "model.py").is_file() else [f"{version}/model.py: missing"]
        elif cfg.backend == "python":
            problems += [f"{folder}/{VERSION}/{f}: missing" for f in ("model.py", triton_preprocess.CONFIG_FILE)
                         if not (folder / str(VERSION) / f).is_file()]
        elif cfg.platform == "ensemble":
            problems += _check_ensemble(name, cfg, configs)
    return problems


def _tensors(cfg: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from tritonclient.grpc import model_config_pb2 as pb

    def specs(rows: Any) -> list[TensorSpec]:
        return [TensorSpec(r.name, pb.DataType.Name(r.data_type), tuple(r.dims)) for r in rows]

    return specs(cfg.input), specs(cfg.output)


def _check_onnx(path: Path, cfg: Any) -> list[str]:
    if not path.is_file():
        return [f"{path}: missing"]
    inputs, outputs, batched = onnx_io(path)
    problems = [] if batched else [f"{path}: first dimension is not variable, but max_batch_size is {cfg.max_batch_size}"]
    for what, actual, declared in zip(("inputs", "outputs"), (inputs, outputs), _tensors(cfg), strict=True):
        if actual != declared:
            problems.append(f"{path.parent.parent.name}: config {what} {declared} but the ONNX has {actual}")
    return problems


def _check_ensemble(name: str, cfg: Any, configs: dict[str, Any]) -> list[str]:
    problems = []
    produced = {t.name for t in cfg.input}
    for step in cfg.ensemble_scheduling.step:
        target = configs.get(step.model_name)
        if target is None:
            problems.append(f"{name}: step model {step.model_name!r} is not in the repository")
            continue
        ins, outs = ({t.name for t in x} for x in _tensors(target))
        problems += [f"{name}: {step.model_name} has no input {k!r}" for k in step.input_map if k not in ins]
        problems += [f"{name}: tensor {v!r} is used before a step makes it" for v in step.input_map.values()
                     if v not in produced]
        problems += [f"{name}: {step.model_name} has no output {k!r}" for k in step.output_map if k not in outs]
        produced |= set(step.output_map.values())
    problems += [f"{name}: output {t.name!r} is made by no step" for t in cfg.output if t.name not in produced]
    return problems
