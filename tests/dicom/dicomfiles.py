"""Chest X-ray DICOMs for the DICOM tests, made from real PNGs (the committed examples, else ../shared).

Each instance is a DX image (for presentation) with its own Study/Series/SOP Instance UIDs, the
pixels of a real X-ray (8-bit, MONOCHROME2) and the header a modality writes (Modality,
BodyPartExamined CHEST, ViewPosition PA, patient and study identifiers): what a scanner sends.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from runtime import tinymodels


def source_pngs(n: int = 12) -> list[Path]:
    found = tinymodels.real_images(n)
    if not found:
        pytest.skip("no real X-ray PNGs (examples/images or ../shared/data/cxr) available")
    return found


def cxr_dataset(png: Path, study: str | None = None, series: str | None = None, crop: int = 0, **attrs):
    """A DX pydicom Dataset (with file meta) holding the X-ray in `png`; `crop` rows make its pixels unique."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    pixels = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    pixels = np.ascontiguousarray(pixels[crop:, :])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "EDGECXR-TEST"
    ds.PatientName = "Test^Patient"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDate = "20261203"
    ds.StudyTime = "084000"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write(ds, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def cxr_files(folder: Path, n: int, study: str | None = None) -> list[Path]:
    """`n` DICOM files of real X-rays in `folder`, each with its own SOP Instance UID and pixels."""
    pngs = source_pngs(12)
    return [write(cxr_dataset(pngs[i % len(pngs)], study=study, crop=i // len(pngs)), folder / f"img{i:03d}.dcm")
            for i in range(n)]
