"""Model bundles: one directory per trained model holding every artifact derived from it.

runs/NAME/
  bundle.json        model name, classes, preprocessing spec, training config, dataset sha256,
                     git commit, metrics, export parity, calibration provenance, verify results
  model.keras        Keras reference (needs TensorFlow)
  model.onnx         FP32 ONNX           model.fp16.onnx   FP16 ONNX (FP32 I/O)
  model.int8.onnx    Q/DQ INT8 ONNX      engines/*.engine  TensorRT engines + *.engine.json sidecars

Each stage reads the bundle, adds its artifact and its section, and writes bundle.json atomically,
so the provenance of every deployed file (which data, which calibration images, which commit)
stays in one place that the runtime can read without TensorFlow.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecxr.core.artifacts import BUNDLE_FILES, kind
from edgecxr.core.errors import BundleError
from edgecxr.core.fileutil import sha256_file, write_json
from edgecxr.core.schema import (
    FORMAT,
    FORMAT_VERSION,
    ModelFacts,
    check_bundle,
    check_relative_path,
    read_json_file,
)
from edgecxr.core.spec import PreprocessSpec

BUNDLE_FILE = "bundle.json"
#: Bundle file with the FP32 reference's probabilities per image sha256 (`stages.gate.reference`), so a
#: shipped model that carries no FP32 file can still be gated against its trained model; `models add`
#: copies it with the deployable files.
STORED_REFERENCE = "reference_probs.json"
#: bundle.json section holding every accuracy-gate verdict (see Bundle.gate_verdicts)
GATE_SECTION = "gate"
#: bundle.json map artifact key -> sha256 of the file, written whenever an artifact is set
HASHES = "artifact_sha256"
#: where bundles written before HASHES existed kept each artifact's sha256: (section, key) paths,
#: each written by the stage in the same step that published the file
_LEGACY_HASHES: dict[str, tuple[tuple[str, ...], ...]] = {
    "onnx_fp32": (("export", "fp32_from_fp16", "sha256"), ("export", "onnx_sha256")),
    "onnx_fp16": (("export", "fp16", "sha256"),),
    "onnx_int8": (("calibration", "sha256"),),
}


class Bundle:
    """A model bundle directory and its bundle.json."""

    def __init__(self, directory: str | Path, meta: dict[str, Any]):
        self.dir = Path(directory)
        self.meta = meta

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: str | Path,
        model: str,
        classes: Sequence[str],
        spec: PreprocessSpec,
        **sections: Any,
    ) -> Bundle:
        """Start a new bundle (the directory may exist, e.g. when resuming training)."""
        meta: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model,
            "classes": list(classes),
            "input_shape": list(spec.input_shape),
            "preprocess": spec.to_dict(),
            "artifacts": {},
        }
        meta.update(sections)
        bundle = cls(directory, meta)
        bundle.dir.mkdir(parents=True, exist_ok=True)
        return bundle

    @classmethod
    def load(cls, directory: str | Path) -> Bundle:
        """Open an existing bundle; a missing or foreign bundle.json is a BundleError."""
        directory = Path(directory)
        if directory.is_file() and directory.name == BUNDLE_FILE:
            directory = directory.parent
        path = directory / BUNDLE_FILE
        if not path.is_file():
            raise BundleError(f"{directory}: not a model bundle (no {BUNDLE_FILE}); train one with `edgecxr train`")
        meta = read_json_file(path)
        check_bundle(meta, path)  # types, ranges, paths and hashes; one-line BundleError naming the field
        return cls(directory, meta)

    # -- accessors ----------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.meta["preprocess"])

    @property
    def path(self) -> Path:
        return self.dir / BUNDLE_FILE

    @property
    def facts(self) -> ModelFacts:
        """What bundle.json says about the model, to compare with what each model file says."""
        return ModelFacts(classes=tuple(self.classes), spec=self.spec, model=self.model)

    def inside(self, rel: str, field: str) -> Path:
        """`rel` (a path from bundle.json) as a path in the bundle; BundleError if it leads outside.

        Both the written path ('..', absolute) and where it resolves to (a symlink to /etc/passwd)
        must stay in the bundle folder: bundle.json is data, and data must not choose which file
        of the machine gets loaded as a model.
        """
        check_relative_path(rel, str(self.path), field)
        path = self.dir / rel
        try:
            path.resolve().relative_to(self.dir.resolve())
        except ValueError:
            raise BundleError(f"{self.path}: {field} = {rel!r} resolves to {path.resolve()}, outside the bundle "
                              "(a symlink?); artifact files must be inside the bundle folder") from None
        return path

    def artifact(self, key: str, must_exist: bool = True) -> Path | None:
        """Path of an artifact recorded in the bundle; None when absent (or BundleError if required).

        A recorded path that leads outside the bundle is always an error, never "absent".
        """
        name = (self.meta.get("artifacts") or {}).get(key)
        path = self.inside(name, f"artifacts.{key}") if name else None
        if path is not None and path.exists():
            return path
        if must_exist:
            stage = kind(key).made_by
            has = [k for k, n in (self.meta.get("artifacts") or {}).items() if n and (self.dir / n).exists()]
            if stage == "export" and "keras" not in has:
                # a shipped/registered model without its Keras file: `edgecxr export` cannot help
                raise BundleError(f"{self.dir}: bundle has no {key} artifact, and no Keras model to make one from; "
                                  f"it has {', '.join(has) or 'nothing'}")
            raise BundleError(f"{self.dir}: bundle has no {key} artifact; the {stage} stage makes it (`edgecxr {stage}`)")
        return None

    def default_path(self, key: str) -> Path:
        if key not in BUNDLE_FILES:
            raise BundleError(f"artifact {key!r} has no default file name; known: {', '.join(BUNDLE_FILES)}")
        return self.dir / BUNDLE_FILES[key]

    def set_artifact(self, key: str, path: str | Path) -> None:
        """Record `path` (a published file inside the bundle) as artifact `key`, with its sha256.

        Every stage publishes through here, so every artifact's hash is recorded when it is made
        and the runtime can refuse a file replaced afterwards (Classifier.load). Saved by the
        caller's next `update`/`save`.
        """
        path = Path(path)
        try:
            rel = path.resolve().relative_to(self.dir.resolve())
        except ValueError:
            raise BundleError(f"artifact {path} is outside the bundle {self.dir}") from None
        self.meta.setdefault("artifacts", {})[key] = rel.as_posix()
        hashes = self.meta.setdefault(HASHES, {})
        if path.is_file():
            hashes[key] = sha256_file(path)
        else:
            hashes.pop(key, None)

    def recorded_sha256(self, key: str) -> str | None:
        """The sha256 bundle.json records for artifact `key`; None when it records none.

        Bundles written before HASHES existed are read through the hash each stage wrote in its
        own section when it published the file (export, calibration).
        """
        digest = (self.meta.get(HASHES) or {}).get(key)
        if digest:
            return str(digest)
        for trail in _LEGACY_HASHES.get(key, ()):
            node: Any = self.meta
            for step in trail:
                node = node.get(step) if isinstance(node, dict) else None
            if isinstance(node, str) and node:
                return node
        return None

    # -- the accuracy gate's verdicts: one section, "gate", keyed by artifact ------------------------
    def gate_verdicts(self) -> dict[str, dict[str, Any]]:
        """Artifact key -> its latest gate entry ({"passed": bool, "time", "split", "n", "by", ...}).

        Engines are keyed "engine:<file name>". Bundles written before the "gate" section existed
        kept verdicts in three places; they are read through `_legacy_verdicts` until the next gate
        run rewrites them here.
        """
        gate = self.meta.get(GATE_SECTION)
        return dict(gate) if isinstance(gate, dict) else _legacy_verdicts(self.meta)

    def gate_verdict(self, key: str) -> bool | None:
        """Whether `key` passed the accuracy gate; None when it was never gated, or when the verdict
        names other bytes (its sha256) than the file bundle.json now lists for `key`: a file replaced
        after its gate run (by hand, or by a stage that did not gate it) is not verified."""
        entry = self.gate_verdicts().get(key) or {}
        passed = entry.get("passed")
        if not isinstance(passed, bool):
            return None
        gated, current = entry.get("sha256"), self.recorded_sha256(key)
        if gated and current and gated != current:
            return None
        return passed

    def record_gate(self, rows: dict[str, dict[str, Any]], run: dict[str, Any], by: str) -> None:
        """Record gate rows (artifact key -> verdict and metrics) from one run of stage `by`, and save.

        A later run replaces an artifact's entry; artifacts the run did not check keep theirs.
        """
        verdicts = self.gate_verdicts()
        for key, row in rows.items():
            verdicts[key] = {**row, **run, "by": by}
        for legacy in ("verify",):
            self.meta.pop(legacy, None)
        if isinstance(self.meta.get("calibration"), dict):
            self.meta["calibration"].pop("gate", None)
        for entry in (self.meta.get("engines") or {}).values():
            if isinstance(entry, dict):
                entry.pop("verified", None)
        self.update(**{GATE_SECTION: verdicts})

    def update(self, **sections: Any) -> None:
        """Replace top-level sections and save."""
        self.meta.update(sections)
        self.save()

    def save(self) -> Path:
        return write_json(self.path, self.meta)


def _legacy_verdicts(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Verdicts of a bundle written before the "gate" section: bundle.json["verify"], the INT8
    calibration's own gate, and engines' "verified" flags; the most recent verdict wins."""
    out: dict[str, dict[str, Any]] = {}
    sections = (("verify", meta.get("verify")), ("calibrate", (meta.get("calibration") or {}).get("gate")))
    for by, section in sections:
        if not isinstance(section, dict) or not isinstance(section.get("artifacts"), dict):
            continue
        for key, entry in section["artifacts"].items():
            row = dict(entry) if isinstance(entry, dict) else {"passed": entry}
            if not isinstance(row.get("passed"), bool):
                continue  # the reference, or an artifact that could not run: no verdict
            row.update(time=str(section.get("time", "")), split=section.get("split"), n=section.get("n"), by=by)
            if key not in out or row["time"] >= out[key]["time"]:
                out[key] = row
    for rel, entry in (meta.get("engines") or {}).items():
        if isinstance(entry, dict) and "verified" in entry:
            out[f"engine:{Path(rel).name}"] = {"passed": entry["verified"], "time": str(entry.get("built_at", "")),
                                              "by": "build"}
    return out


def git_commit(cwd: str | Path | None = None) -> str | None:
    """Commit of the edgecxr source tree (with '-dirty' when modified), or None outside git."""
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "") if sha else None
