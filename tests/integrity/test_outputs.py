"""Campaign family "outputs": output options pointed at data, and file names that break outputs.

An output option may create or replace its own file; it must never replace an input, a bundle's
file, another model or image, or go through a symlink (exit 2 before any work), and a replaced file
keeps its mode. Any file name, whatever its bytes, reaches the CSV intact and the table escaped.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from integrity import hostile
from integrity.campaign import Case, Plan, run_case

GOOD = "good.png"


def _good(folder: Path, name: str = GOOD) -> Path:
    path = folder / name
    path.write_bytes(hostile.good_png(11))
    return path


def _refused(name: str, target, option: tuple[str, ...] = ("infer",), flag: str = "--csv") -> Case:
    """`edgecxr infer ... --csv TARGET` (or another command/flag) must stop with exit 2."""

    def build(folder: Path) -> Plan:
        good = _good(folder)
        out = target(folder, good)
        args = [*option, "-m", str(folder / "bundle"), str(good), flag, str(out)]
        return Plan(args=args, exit_code=2)

    return Case("outputs", f"{option[0]}-{flag.strip('-')}-onto-{name}", build)


def _link(folder: Path, good: Path) -> Path:
    (folder / "elsewhere.csv").write_text("precious\n")
    (folder / "link.csv").symlink_to(folder / "elsewhere.csv")
    return folder / "link.csv"


def _dangling(folder: Path, good: Path) -> Path:
    (folder / "dangling.csv").symlink_to(folder / "nowhere" / "x.csv")
    return folder / "dangling.csv"


def _hardlink(folder: Path, good: Path) -> Path:
    os.link(good, folder / "alias.csv")
    return folder / "alias.csv"


def _fifo(folder: Path, good: Path) -> Path:
    os.mkfifo(folder / "pipe.csv")
    return folder / "pipe.csv"


def _other_image(folder: Path, good: Path) -> Path:
    return _good(folder, "other.png")


def _other_model(folder: Path, good: Path) -> Path:
    (folder / "mine.onnx").write_bytes((folder / "bundle" / "model.onnx").read_bytes())
    return folder / "mine.onnx"


def _dicom(folder: Path, good: Path) -> Path:
    (folder / "study.dcm").write_bytes(hostile.dicom_bytes(hostile.example(0)))
    return folder / "study.dcm"


def _pacs_dicom(name: str):
    """A DICOM under a PACS-style name: its SOP Instance UID, or IM0001, no .dcm (detected by content)."""

    def make(folder: Path, good: Path) -> Path:
        (folder / name).write_bytes(hostile.dicom_bytes(hostile.example(0)))
        return folder / name

    return make


def _png_without_suffix(folder: Path, good: Path) -> Path:
    (folder / "scan-export").write_bytes(hostile.good_png(2))
    return folder / "scan-export"


def _folder(folder: Path, good: Path) -> Path:
    (folder / "results").mkdir()
    return folder / "results"


TARGETS = {
    "input-image": lambda f, g: g,
    "input-image-relative-spelling": lambda f, g: f / "bundle" / ".." / GOOD,
    "bundle-json": lambda f, g: f / "bundle" / "bundle.json",
    "bundle-fp32": lambda f, g: f / "bundle" / "model.onnx",
    "bundle-int8": lambda f, g: f / "bundle" / "model.int8.onnx",
    "bundle-fp16": lambda f, g: f / "bundle" / "model.fp16.onnx",
    "symlink": _link,
    "dangling-symlink": _dangling,
    "hardlink-to-input": _hardlink,
    "fifo": _fifo,
    "other-image": _other_image,
    "other-model": _other_model,
    "dicom": _dicom,
    "dicom-named-by-uid": _pacs_dicom("1.2.826.0.1.3680043.8.498.1"),
    "dicom-no-suffix": _pacs_dicom("IM0001"),
    "png-no-suffix": _png_without_suffix,
    "folder": _folder,
}


def _written(name: str, prepare, mode: int | None = None) -> Case:
    """An output that may be written: it is, completely, and an existing file keeps its mode."""

    def build(folder: Path) -> Plan:
        good = _good(folder)
        out = prepare(folder)
        if mode is not None:
            out.write_text("old results\n")
            out.chmod(mode)

        def check(result) -> str | None:
            rows = list(csv.reader(io.StringIO(out.read_text())))
            if len(rows) != 2 or rows[1][0] != str(good):
                return f"CSV has {len(rows)} rows"
            if mode is not None and (out.stat().st_mode & 0o777) != mode:
                return f"mode {oct(out.stat().st_mode & 0o777)}, was {oct(mode)}"
            return None

        return Plan(args=["infer", "-m", str(folder / "bundle"), str(good), "--csv", str(out)], check=check,
                    writes=(out,))

    return Case("outputs", f"infer-csv-{name}", build)


def _odd_file(folder: Path, raw: bytes) -> Path:
    """A real X-ray under the file name `raw` (any bytes), as Python spells it (surrogateescape)."""
    path = Path(os.fsdecode(os.fsencode(folder) + b"/" + raw))
    path.write_bytes(hostile.good_png(3))
    return path


def _odd_name(name: str, raw: bytes) -> Case:
    """A file named with `raw` bytes: classified, its CSV row holds the exact name, the table one row."""

    def build(folder: Path) -> Plan:
        path = _odd_file(folder, raw)
        out = folder / "out.csv"

        def check(result) -> str | None:
            lines = result.stdout.splitlines()  # header, one row, the audit footer (issue "honest answers")
            if len(lines) != 3 or not lines[2].startswith("audit: model "):
                return f"table has {len(lines)} lines for one image and its footer: {result.stdout!r}"
            if "\x1b" in result.stdout:
                return "escape sequence printed raw"
            rows = list(csv.reader(io.StringIO(out.read_bytes().decode("utf-8", "surrogateescape"))))
            if len(rows) != 2 or rows[1][0] != str(path):
                return f"CSV row {rows[1][0] if len(rows) > 1 else None!r} != {str(path)!r}"
            return None

        return Plan(args=["infer", "-m", str(folder / "bundle"), str(path), "--csv", str(out)], check=check,
                    writes=(out,))

    return Case("outputs", f"odd-name-{name}", build)


def _odd_name_json(name: str, raw: bytes) -> Case:
    def build(folder: Path) -> Plan:
        path = _odd_file(folder, raw)

        def check(result) -> str | None:
            doc = json.loads(result.stdout)
            return None if doc["count"] == 1 and doc["failed"] == 0 else f"JSON: {doc['count']} / {doc['failed']}"

        return Plan(args=["infer", "-m", str(folder / "bundle"), str(path), "--json"], check=check)

    return Case("outputs", f"odd-name-json-{name}", build)


NAMES = {
    "latin1": b"scan\xe9\xff.png",
    "newline": b"scan\nfake row.png",
    "escape": b"scan\x1b[31mred.png",
    "tab-cr": b"scan\t\r.png",
    "comma-quote": b'scan, "quoted".png',
    "utf8": "scan-\u00fcml\u00e4ut-\u65e5\u672c.png".encode(),
    "leading-dash": b"-scan.png",
}

CASES = (
    [_refused(n, t) for n, t in TARGETS.items()]
    + [_refused(n, TARGETS[n], ("bench",), "--out") for n in ("input-image", "bundle-json", "bundle-fp32", "symlink",
                                                              "other-image", "folder")]
    + [
        _written("new-file", lambda f: f / "out.csv"),
        _written("new-nested-folders", lambda f: f / "a" / "b" / "out.csv"),
        _written("existing-0600", lambda f: f / "out.csv", 0o600),
        _written("existing-0640", lambda f: f / "out.csv", 0o640),
        _written("existing-0666", lambda f: f / "out.txt", 0o666),
    ]
    + [_odd_name(n, raw) for n, raw in NAMES.items()]
    + [_odd_name_json(n, raw) for n, raw in NAMES.items()]
)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_output_case(case: Case, case_dir: Path) -> None:
    if "leading-dash" in case.id:
        pytest.skip("a name starting with '-' is an option to any CLI; `--` would be needed")
    outcome, detail = run_case(case, case_dir)
    assert outcome == "clean", f"{case}: {outcome}: {detail}"
