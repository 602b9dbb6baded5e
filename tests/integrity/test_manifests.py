"""Campaign family "manifests": manifests that point outside their folder or at changed files.

`data check` must report them (exit 1) without reading outside files, and every stage that reads a
manifest (here `verify`) must refuse a changed image like `calibrate` does.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime import tinymodels

from integrity import hostile
from integrity.campaign import Case, Plan, run_case

COLUMNS = ["relative_path", "label", "split", "patient_id", "sha256"]


def _manifest(folder: Path, edit: Callable[[list[dict[str, str]], Path], None] | None = None) -> Path:
    """16 small real X-rays (4 classes x 4 splits, one patient each) and their manifest."""
    rows = []
    for i, label in enumerate(tinymodels.CLASSES):
        for j, split in enumerate(("train", "val", "calib", "test")):
            rel = f"images/{label}/{split}-{i}{j}.png"
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            image = hostile.example(i * 4 + j, side=64).copy()
            image[0, 0] = i * 4 + j  # 16 images from 12 examples: every file unique
            data = hostile.encode(image, ".png")
            path.write_bytes(data)
            rows.append({"relative_path": rel, "label": label, "split": split, "patient_id": f"p{i}{j}",
                         "sha256": hashlib.sha256(data).hexdigest()})
    if edit is not None:
        edit(rows, folder)
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(field: str, value: str, index: int = 0) -> Callable[[list[dict[str, str]], Path], None]:
    def edit(rows: list[dict[str, str]], folder: Path) -> None:
        rows[index][field] = value.replace("{folder}", str(folder))

    return edit


def _outside_image(rows: list[dict[str, str]], folder: Path) -> None:
    (folder / "outside").mkdir()
    data = (folder / rows[0]["relative_path"]).read_bytes()
    (folder / "outside" / "x.png").write_bytes(data)


def _both(*edits: Callable[[list[dict[str, str]], Path], None]) -> Callable[[list[dict[str, str]], Path], None]:
    def edit(rows: list[dict[str, str]], folder: Path) -> None:
        for e in edits:
            e(rows, folder)

    return edit


def _changed_image(rows: list[dict[str, str]], folder: Path) -> None:
    (folder / rows[1]["relative_path"]).write_bytes(hostile.encode(hostile.example(11, side=64), ".png"))


#: name -> (edit, --allow-outside?, expected exit of `data check`)
CHECK_EDITS: dict[str, tuple[Callable | None, bool, int]] = {
    "good": (None, False, 0),
    "etc-passwd": (_row("relative_path", "../../../../etc/passwd"), False, 1),
    "etc-passwd-allowed-is-not-an-image": (_row("relative_path", "../../../../etc/passwd"), True, 1),
    "absolute": (_both(_outside_image, _row("relative_path", "{folder}/outside/x.png")), False, 1),
    "absolute-allowed": (_both(_outside_image, _row("relative_path", "{folder}/outside/x.png")), True, 0),
    "dotdot": (_both(_outside_image, _row("relative_path", "images/../../" + "{name}/outside/x.png")), False, 1),
    "dotdot-inside": (_row("relative_path", "images/../images/covid/train-00.png"), False, 0),
    "sha-mismatch": (_changed_image, False, 1),
    "sha-malformed": (_row("sha256", "xyz"), False, 1),
    "missing-file": (_row("relative_path", "images/covid/nope.png"), False, 1),
    "unknown-label": (_row("label", "tuberculosis"), False, 1),
    "unknown-split": (_row("split", "holdout"), False, 1),
    "empty-path": (_row("relative_path", ""), False, 1),
    "leaked-patient": (_row("patient_id", "p01"), False, 1),
    "folder-as-path": (_row("relative_path", "images/covid"), False, 1),
}


def _check_case(name: str) -> Case:
    edit, allow, code = CHECK_EDITS[name]

    def build(folder: Path) -> Plan:
        def fix(rows, f):  # "dotdot" climbs out by the case folder's own name
            if edit is not None:
                edit(rows, f)
            for r in rows:
                r["relative_path"] = r["relative_path"].replace("{name}", f.name)

        manifest = _manifest(folder, fix)
        args = ["data", "check", str(manifest), *(["--allow-outside"] if allow else [])]
        return Plan(args=args, exit_code=code, per_file=True)

    return Case("manifests", f"data-check-{name}", build)


def _text_case(name: str, data: bytes, code: int) -> Case:
    def build(folder: Path) -> Plan:
        path = folder / "manifest.csv"
        path.write_bytes(data)
        return Plan(args=["data", "check", str(path)], exit_code=code, per_file=code == 1)

    return Case("manifests", f"data-check-{name}", build)


def _verify_case(name: str, edit, allow: bool, code: int) -> Case:
    """`verify` on the tiny bundle with a manifest: outside rows and changed images refused, not scored."""

    def build(folder: Path) -> Plan:
        manifest = _manifest(folder, edit)
        args = ["verify", "-m", str(folder / "bundle"), "--data", str(manifest), "--split", "val",
                "--artifact", "onnx_fp16", "--reference", "onnx_fp32", *(["--allow-outside"] if allow else [])]
        bundle = folder / "bundle"
        writes = (bundle / "bundle.json", bundle / "verify.json", bundle / "verify.md")
        return Plan(args=args, exit_code=code, writes=writes)

    return Case("manifests", f"verify-{name}", build)


def _val_row(field: str, value: str) -> Callable[[list[dict[str, str]], Path], None]:
    return _row(field, value, index=1)  # row 1 is covid/val


def _changed_val(rows: list[dict[str, str]], folder: Path) -> None:
    (folder / rows[1]["relative_path"]).write_bytes(hostile.encode(hostile.example(11, side=64), ".png"))


def _outside_val(rows: list[dict[str, str]], folder: Path) -> None:
    _outside_image(rows, folder)
    rows[1]["relative_path"] = f"{folder}/outside/x.png"
    rows[1]["sha256"] = rows[0]["sha256"]


CASES = (
    [_check_case(n) for n in CHECK_EDITS]
    + [
        _text_case("empty-file", b"", 1),
        _text_case("header-only", b"relative_path,label,split,patient_id\n", 1),
        _text_case("missing-columns", b"path,label\nx.png,covid\n", 1),
        _text_case("not-utf8", b"relative_path,label,split,patient_id\n\xff\xfe.png,covid,train,p\n", 1),
        _text_case("nul-byte", b"relative_path,label,split,patient_id\na\x00.png,covid,train,p\n", 1),
        _text_case("binary", bytes(range(256)) * 8, 1),
    ]
    + [
        _verify_case("good", None, False, 0),
        _verify_case("changed-image", _changed_val, False, 1),
        _verify_case("etc-passwd", _val_row("relative_path", "../../../../etc/passwd"), False, 1),
        _verify_case("absolute", _outside_val, False, 1),
        _verify_case("absolute-allowed", _outside_val, True, 0),
    ]
)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_manifest_case(case: Case, case_dir: Path) -> None:
    outcome, detail = run_case(case, case_dir)
    assert outcome == "clean", f"{case}: {outcome}: {detail}"
