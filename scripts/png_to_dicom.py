"""Wrap X-ray PNG/JPEG files into DX DICOM files, as a scanner would send them (for trying the DICOM node).

Each image becomes a single-frame 8-bit MONOCHROME2 "Digital X-Ray Image Storage - For
Presentation" instance with new Study/Series/SOP Instance UIDs (one study per run), Modality DX,
BodyPartExamined CHEST, ViewPosition PA and a test patient. Only for trying `edgecxr infer
--dicom-sr`, `edgecxr listen` and `edgecxr watch` (docs/DICOM.md) on the committed examples.

    python scripts/png_to_dicom.py examples/images/*/*.png --out scans/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid


def to_dicom(image: Path, out: Path, study: str, series: str, number: int) -> Path:
    pixels = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise SystemExit(f"error: {image}: not a PNG/JPEG image")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "EDGECXR-DEMO", "Demo^Patient", "", "O"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.StudyDate, ds.StudyTime = "20261203", "090000"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.set_pixel_data(np.ascontiguousarray(pixels), "MONOCHROME2", 8)
    target = out / f"{image.stem}.dcm"
    ds.save_as(target, enforce_file_format=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for the .dcm files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    for i, image in enumerate(args.images, 1):
        print(to_dicom(image, args.out, study, series, i))
    return 0


if __name__ == "__main__":
    sys.exit(main())
