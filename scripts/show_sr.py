"""Print the content tree of an edgecxr Structured Report (or any SR) as indented text.

    .venv/bin/python scripts/show_sr.py reports/*.sr.dcm

The view in docs/HEATMAPS.md ("The same answer as a DICOM SR") is this script's output.
"""

from __future__ import annotations

import sys

import pydicom


def _value(item) -> str:
    vt = item.ValueType
    if vt == "TEXT":
        return item.TextValue
    if vt == "CODE":
        return item.ConceptCodeSequence[0].CodeMeaning
    if vt == "NUM":
        mv = item.MeasuredValueSequence[0]
        return f"{mv.NumericValue} ({mv.MeasurementUnitsCodeSequence[0].CodeValue})"
    if vt == "UIDREF":
        return item.UID
    if vt == "IMAGE":
        return "SOP Instance " + item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    if vt in ("DATETIME", "DATE", "TIME"):
        return str(getattr(item, vt.title().replace("time", "Time"), ""))
    return ""


def _walk(items, depth: int) -> None:
    for item in items:
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        value = _value(item)
        print("  " * depth + f"{item.ValueType:<9} {name}" + (f": {value}" if value else ""))
        if "ContentSequence" in item:
            _walk(item.ContentSequence, depth + 1)


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
            title = ds.ConceptNameCodeSequence[0].CodeMeaning
        except Exception as exc:  # noqa: BLE001 - a viewer: say which file and go on
            print(f"error: {path}: not a readable SR ({exc.__class__.__name__}: {exc})", file=sys.stderr)
            continue
        print(f"{path}: {ds.SOPClassUID.name}, series '{getattr(ds, 'SeriesDescription', '')}'")
        print(title)
        _walk(ds.ContentSequence, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
