"""Builders for the data-layer tests: DICOM files, example-derived images and the two public layouts.

Everything is written from real encoders (pydicom, OpenCV) and the committed example X-rays, so
these tests run without ../shared. A uniquely named module (not conftest.py, which several test
folders have) so test modules can import it directly.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


def example_pngs() -> list[Path]:
    """The 12 committed example X-rays (8-bit gray PNG), sorted."""
    paths = sorted(EXAMPLES.glob("*/*.png"))
    assert len(paths) == 12, f"expected 12 committed example images in {EXAMPLES}"
    return paths


def xray(index: int, crop: int = 0) -> np.ndarray:
    """Example X-ray `index` (mod 12) as uint8; `crop` trims rows so each file's bytes are unique."""
    paths = example_pngs()
    image = cv2.imread(str(paths[index % len(paths)]), cv2.IMREAD_GRAYSCALE)
    return np.ascontiguousarray(image[crop:, :])


def write_jpeg(path: Path, image: np.ndarray, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def make_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attrs,
) -> Path:
    """A DX-like DICOM file with native (uncompressed) pixels and extra attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for key, value in attrs.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- the two public layouts ----------------------------------------------------------------------

#: (patientid, finding, view, modality, filename, selected?) rows of the covid metadata fixture.
COVID_ROWS = [
    ("1", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "c1a.jpg", True),
    ("1", "Pneumonia/Viral/COVID-19", "AP", "X-ray", "c1b.png", True),
    ("2", "Pneumonia/Viral/COVID-19", "AP Supine", "X-ray", "c2a.jpg", True),
    ("3", "COVID-19, ARDS", "PA", "X-ray", "c3a.jpg", True),
    ("4", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "c4a.jpg", True),
    ("5", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "c5a.jpg", True),
    ("6", "Pneumonia/Viral/COVID-19", "AP", "X-ray", "c6a.jpg", True),
    ("7", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "c1a_copy.jpg", True),  # same bytes as c1a.jpg
    ("8", "Pneumonia/Viral/COVID-19", "L", "X-ray", "c8lat.jpg", False),  # lateral view
    ("9", "Pneumonia/Viral/COVID-19", "Axial", "CT", "c9ct.jpg", False),  # CT
    ("10", "Pneumonia/Bacterial/Streptococcus", "PA", "X-ray", "c10strep.jpg", False),  # not COVID
    ("11", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "c11missing.jpg", False),  # listed, no file
]


def build_covid_layout(root: Path) -> Path:
    """covid-chestxray-dataset layout: metadata.csv (ieee columns) + images/."""
    images = root / "images"
    images.mkdir(parents=True)
    for i, (*_, name, _keep) in enumerate(COVID_ROWS):
        if name == "c11missing.jpg":
            continue
        if name == "c1a_copy.jpg":
            (images / name).write_bytes((images / "c1a.jpg").read_bytes())
        elif name.endswith(".png"):
            cv2.imwrite(str(images / name), xray(i, crop=6))
        else:
            write_jpeg(images / name, xray(i, crop=6))
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["patientid", "offset", "sex", "age", "finding", "survival", "view", "modality", "date",
                    "location", "folder", "filename", "doi", "url", "license", "clinical_notes"])
        for pid, finding, view, modality, name, _ in COVID_ROWS:
            w.writerow([pid, "0", "M", "60", finding, "", view, modality, "2020", "", "images", name, "", "",
                        "CC BY 4.0", "note, with comma"])
    return root


#: Kaggle chest_xray file names (split folder, class folder, name) of the Kermany fixture.
KERMANY_FILES = [
    *[("train", "NORMAL", f"IM-{100 + i:04d}-0001.jpeg") for i in range(8)],
    ("train", "NORMAL", "IM-0100-0002.jpeg"),  # second image of patient IM-0100
    *[("test", "NORMAL", f"NORMAL2-IM-{200 + i:04d}-0001.jpeg") for i in range(4)],
    *[("train", "PNEUMONIA", f"person{i}_bacteria_{10 + i}.jpeg") for i in range(1, 10)],
    ("train", "PNEUMONIA", "person1_bacteria_99.jpeg"),
    *[("train", "PNEUMONIA", f"person{i}_virus_{50 + i}.jpeg") for i in range(5, 14)],  # 5..9 also bacterial
    ("val", "PNEUMONIA", "person20_virus_70.jpeg"),
]


def build_kermany_layout(root: Path) -> Path:
    """Kaggle chest_xray layout with the nested duplicate copy and macOS junk the zip contains."""
    for i, (split, cls, name) in enumerate(KERMANY_FILES):
        write_jpeg(root / split / cls / name, xray(i, crop=1 + i // 12))
    # chest_xray/chest_xray/...: byte-identical copies of some files (listed once).
    for split, cls, name in KERMANY_FILES[:3]:
        dup = root / "chest_xray" / split / cls / name
        dup.parent.mkdir(parents=True, exist_ok=True)
        dup.write_bytes((root / split / cls / name).read_bytes())
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    junk = root / "__MACOSX" / "train" / "NORMAL"
    junk.mkdir(parents=True)
    (junk / "._IM-0100-0001.jpeg").write_bytes(b"\0\5\26\7")
    (root / "train" / "PNEUMONIA" / "notes.txt").write_text("not an image")
    write_jpeg(root / "train" / "PNEUMONIA" / "scan_0001.jpeg", xray(5, crop=9))  # name without person id
    return root
