r"""Wrap X-ray PNG/JPEG files into DX DICOM files, as a scanner would send them (for trying the DICOM node).

Each image becomes a single-frame 8-bit MONOCHROME2 "Digital X-Ray Image Storage - For
Presentation" instance with new Study/Series/SOP Instance UIDs (one study per run), Modality DX,
BodyPartExamined CHEST, ViewPosition PA and a test patient. Only for trying `edgecxr infer
--dicom-sr`, `edgecxr listen` and `edgecxr watch` (docs/DICOM.md) on the committed examples.

    python scripts/png_to_dicom.py examples/images/*/*.png --out scans/

The objects are valid DX images (dicom3tools' `dciodvfy` finds no error; tests/dicom/test_conformance.py
runs it), so a strict archive takes them. What a PNG does not say is written as the DX IOD
allows for an unknown value (Type 2 empty: detector type, positioner type, manufacturer's model) or
as the display convention the PNG was exported with:

* Image Type DERIVED\PRIMARY (converted from an export, not acquired here); no lossy step here
  (Lossy Image Compression 00), no burned-in identifying text (public de-identified images);
* the PNG's pixels are display-ready (bone bright): MONOCHROME2, Presentation LUT IDENTITY,
  Pixel Intensity Relationship LIN with sign -1 (higher value, less X-ray intensity), rescale
  identity, and a window (center 128, width 256) that maps every 8-bit value to itself, so the
  DICOM displays, and is classified, as the PNG is;
* a PA chest: Image Laterality U, Patient Orientation L\F, Anatomic Region SCT Chest, View Code
  SCT postero-anterior;
* Imager Pixel Spacing (Type 1, unknown for a PNG): nominal, the longer side taken as 430 mm (a
  35 x 43 cm detector), so a viewer's ruler is roughly right; nothing in edgecxr reads it.
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
    ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.Manufacturer, ds.ManufacturerModelName = "edgecxr", "png_to_dicom.py"
    ds.set_pixel_data(np.ascontiguousarray(pixels), "MONOCHROME2", 8)
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LIN", -1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter, ds.WindowWidth = 128, 256  # LINEAR: every 8-bit value maps to itself
    ds.ImageLaterality, ds.PatientOrientation = "U", ["L", "F"]
    ds.AnatomicRegionSequence = [_code("816094009", "SCT", "Chest")]
    ds.ViewCodeSequence = [_code("272479007", "SCT", "postero-anterior")]
    ds.DetectorType, ds.PositionerType = "", ""
    spacing = f"{430.0 / max(pixels.shape):.6f}"[:16]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.AcquisitionContextSequence = []
    target = out / f"{image.stem}.dcm"
    ds.save_as(target, enforce_file_format=True)
    return target


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


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
