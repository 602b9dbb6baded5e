#!/usr/bin/env python3
"""Rebuild the committed example images from ../shared/data/cxr (see ATTRIBUTION.md).

Usage:  python examples/images/build_examples.py [path/to/shared/data/cxr]

Picks, per Kermany class, the first 4 CC BY 4.0 images of the curated set's *test* split (sorted
by path) with a distinct patient and an aspect ratio <= 1.5, downsizes them to a 256 px short side
(cv2 INTER_AREA, 8-bit gray PNG) and writes manifest.csv with one image per class in each split.
No COVID (ieee8023) image is used: their licenses do not allow redistribution here.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import cv2

from edgecxr.data.io import load_image
from edgecxr.core.fileutil import atomic_write_text, sha256_file

HERE = Path(__file__).resolve().parent
CLASSES = ("normal", "pneumonia_bacterial", "pneumonia_viral")
SPLITS = ("train", "val", "calib", "test")
SHORT_SIDE = 256
PER_CLASS = 4


def main(shared: Path) -> None:
    with open(shared / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["relative_path"])
    used_patients: set[str] = set()
    out_rows = []
    for label in CLASSES:
        picked = []
        for r in rows:
            if len(picked) == PER_CLASS:
                break
            w, h = int(r["width"]), int(r["height"])
            if (
                r["label"] == label
                and r["split"] == "test"
                and r["license"].startswith("CC BY 4.0")
                and r["patient_id"].startswith("kermany:")
                and r["patient_group"] not in used_patients
                and max(w, h) / min(w, h) <= 1.5
            ):
                picked.append(r)
                used_patients.add(r["patient_group"])
        for r, split in zip(picked, SPLITS, strict=True):
            image = load_image(shared / r["relative_path"])
            h, w = image.shape
            scale = SHORT_SIDE / min(h, w)
            size = (round(w * scale), round(h * scale))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            rel = f"{label}/{Path(r['relative_path']).name}"
            dest = HERE / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(dest), small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            out_rows.append(
                {
                    "relative_path": rel,
                    "label": label,
                    "split": split,
                    "patient_id": r["patient_id"],
                    "patient_group": r["patient_group"],
                    "sha256": sha256_file(dest),
                    "width": size[0],
                    "height": size[1],
                    "source_path": r["source_path"],
                    "source_repo": r["source_repo"],
                    "license": r["license"],
                }
            )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(out_rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(out_rows)
    atomic_write_text(HERE / "manifest.csv", buf.getvalue())
    for row in out_rows:
        print(row["split"], row["relative_path"], row["source_path"])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "cxr")
