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
from edgecxr.core.fileutil import read_json, write_json
from edgecxr.core.spec import PreprocessSpec

BUNDLE_FILE = "bundle.json"
#: bundle.json section holding every accuracy-gate verdict (see Bundle.gate_verdicts)
GATE_SECTION = "gate"
FORMAT = "edgecxr-bundle"
FORMAT_VERSION = 1



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
        try:
            meta = read_json(path)
        except ValueError as exc:
            raise BundleError(f"{path}: corrupt JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise BundleError(f"{path}: not an edgecxr bundle (a JSON {type(meta).__name__}, not an object)")
        if meta.get("format") != FORMAT:
            raise BundleError(f"{path}: not an edgecxr bundle (format={meta.get('format')!r})")
        version = meta.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError(f"{path}: corrupt bundle: format_version {version!r} is not an integer")
        if version > FORMAT_VERSION:
            raise BundleError(f"{path}: bundle format {version} is newer than this edgecxr ({FORMAT_VERSION}); upgrade")
        for key in ("model", "classes", "preprocess"):
            if key not in meta:
                raise BundleError(f"{path}: missing '{key}'")
        _check_sections(path, meta)
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

    def artifact(self, key: str, must_exist: bool = True) -> Path | None:
        """Path of an artifact recorded in the bundle; None when absent (or BundleError if required)."""
        name = self.meta.get("artifacts", {}).get(key)
        path = self.dir / name if name else None
        if path is not None and path.exists():
            return path
        if must_exist:
            stage = kind(key).made_by
            raise BundleError(f"{self.dir}: bundle has no {key} artifact; the {stage} stage makes it (`edgecxr {stage}`)")
        return None

    def default_path(self, key: str) -> Path:
        if key not in BUNDLE_FILES:
            raise BundleError(f"artifact {key!r} has no default file name; known: {', '.join(BUNDLE_FILES)}")
        return self.dir / BUNDLE_FILES[key]

    def set_artifact(self, key: str, path: str | Path) -> None:
        path = Path(path)
        try:
            rel = path.resolve().relative_to(self.dir.resolve())
        except ValueError:
            raise BundleError(f"artifact {path} is outside the bundle {self.dir}") from None
        self.meta.setdefault("artifacts", {})[key] = rel.as_posix()

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
        """Whether `key` passed the accuracy gate; None when it was never gated."""
        passed = (self.gate_verdicts().get(key) or {}).get("passed")
        return passed if isinstance(passed, bool) else None

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


def _check_sections(path: Path, meta: dict[str, Any]) -> None:
    """Type-check the sections every stage reads, so a hand-edited bundle.json fails here, by name."""
    classes = meta["classes"]
    if not isinstance(meta["model"], str):
        raise BundleError(f"{path}: corrupt bundle: 'model' must be a string, got {meta['model']!r}")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise BundleError(f"{path}: corrupt bundle: 'classes' must be a non-empty list of names, got {classes!r}")
    if not isinstance(meta.get("artifacts", {}), dict):
        raise BundleError(f"{path}: corrupt bundle: 'artifacts' must be an object of key -> file name")
    if not isinstance(meta["preprocess"], dict):
        raise BundleError(f"{path}: corrupt bundle: 'preprocess' must be an object")
    try:
        PreprocessSpec.from_dict(meta["preprocess"])
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None


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
