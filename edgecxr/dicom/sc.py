"""A DICOM Secondary Capture of a heat map overlay, in the source's study, for the PACS viewer.

A radiologist reads results where the images are: in the PACS. So a heat map of a DICOM input can
go back as a DICOM object of its own: a Secondary Capture Image (highdicom `SCImage`, RGB 8-bit)
showing the overlay of `edgecxr.runtime.overlay` at the source's size (capped like the PNG), with

  * the source's patient and study, copied by their DICOM Type as for the SR
    (`edgecxr.dicom.attributes`: an anonymised source gives empty Type 2 attributes), so the
    viewer files it in the same Study (same Study Instance UID);
  * a Series of its own (Series Description "edgecxr heat map ...") so it never mixes with the
    modality's own images; Body Part Examined is the source's; Laterality (General Series, Type 2C,
    required for a paired body part) is the source's Laterality or Image Laterality when that is R
    or L, else absent for an unpaired body part (a chest), else present and empty (unknown);
  * UIDs derived, as the SR's are, from the source (its SOP Instance UID for the capture, its
    Series Instance UID for the series), the model artifact and the map's class and settings: a
    retry gives the same UIDs and replaces the capture in the PACS instead of doubling it;
  * a Source Image Sequence naming the source's SOP Class and SOP Instance UID, and a
    Derivation Description stating method, class, model and the model's probability;
  * Burned In Annotation "NO": the pixels carry no text; Image Comments say it is not for
    diagnosis on its own.

The patient orientation is the source's when it has one; a frontal chest radiograph without it
gets the conventional display orientation (L, F: patient's left to the right of the image, feet
down), which is how the model's training images were displayed. Files are named and written as
the SR is (`edgecxr.dicom.outputs`): `<source SOP Instance UID>.sc.dcm`, durably, replacing only
an earlier capture. Needs highdicom (the `dicom-node` extra; a missing install is one error
naming it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.errors import DataError
from edgecxr.runtime.heatmap import HeatMap
from edgecxr.runtime.overlay import MAX_SIDE, display_image, render

#: the Series Number given to heat map series (a high number keeps them after the modality's)
SERIES_NUMBER = 9901
#: the orientation assumed for a frontal chest radiograph that does not state one
FRONTAL_ORIENTATION = ("L", "F")
#: Body Part Examined values of unpaired body parts (PS3.16 Annex L), which take no Laterality
UNPAIRED = frozenset({"CHEST", "THORAX", "HEART", "MEDIASTINUM", "ABDOMEN", "CHESTABDOMEN", "CHESTABDPELVIS",
                      "ABDOMENPELVIS", "PELVIS", "HEAD", "SKULL", "HEADNECK", "NECK", "SPINE", "CSPINE", "TSPINE",
                      "LSPINE", "SSPINE", "COCCYX", "WHOLEBODY", "ESOPHAGUS", "TRACHEA", "STOMACH", "BLADDER"})
#: the file suffix of a heat map Secondary Capture, beside the SR's `.sr.dcm` (`edgecxr.dicom.outputs`)
SUFFIX = ".sc.dcm"


def heatmap_secondary_capture(
    source: str | Path | Any,
    heat: HeatMap,
    model: str = "edgecxr",
    series_uid: str | None = None,
    max_side: int = MAX_SIDE,
    audit: Mapping[str, Any] | None = None,
) -> Any:
    """The Secondary Capture dataset (pydicom Dataset) of `heat` overlaid on the DICOM file `source`.

    Args:
        source: the DICOM input the map was computed on: a file, or a pydicom Dataset (as received).
        heat: its occlusion map (`edgecxr.runtime.heatmap.explain`).
        model: model name and version for the Derivation Description.
        series_uid: the heat map series to add to; None: the one derived from the source's series and the model.
        max_side: longest side of the image, as for the PNG overlay.
        audit: `Classifier.audit`: its artifact sha256 identifies the model in the derived UIDs (else `model`).

    Raises:
        DataError: `source` is not a DICOM file with valid Study/Series/SOP Instance and SOP Class UIDs.
    """
    from edgecxr.dicom import require
    from edgecxr.dicom.attributes import reference
    from edgecxr.dicom.sr import result_uid

    hd = require("highdicom", "DICOM Secondary Capture heat maps")
    import pydicom

    name = "the DICOM data set" if isinstance(source, pydicom.Dataset) else str(source)
    if isinstance(source, pydicom.Dataset):
        ref = source  # received over the network: its header is at hand
    else:
        try:
            ref = pydicom.dcmread(str(source), stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a bad file
            raise DataError(f"{source}: not a readable DICOM file ({exc})") from None
    try:
        clean = reference(ref)  # Type 1 checked, Type 2 present (empty when unknown), invalid values dropped
    except ValueError as exc:
        raise DataError(f"{name}: {exc}") from None
    identity = dict(audit) if audit else {"model": model}
    target = f"sc:{heat.target}:{heat.config.patch}:{heat.config.stride}"
    rgb = render(display_image(source, max_side), heat)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=clean,
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid or result_uid(str(clean.SeriesInstanceUID), identity, "sc-series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=result_uid(str(clean.SOPInstanceUID), identity, target),
        instance_number=1,
        manufacturer="edgecxr",
        patient_orientation=_orientation(clean),
    )
    laterality = _laterality(clean)
    if laterality is not None:
        sc.Laterality = laterality
    if clean.get("BodyPartExamined"):
        sc.BodyPartExamined = clean.BodyPartExamined
    sc.SeriesDescription = f"edgecxr heat map ({heat.target})"[:64]
    sc.BurnedInAnnotation = "NO"
    sc.DerivationDescription = (
        f"occlusion sensitivity, class {heat.target}, model {model}, probability {heat.baseline:.4f}, "
        f"{heat.masks} masks (patch {heat.config.patch}, stride {heat.config.stride})"
    )[:1024]
    sc.ImageComments = "Heat map: regions whose masking lowered the model's probability; not for diagnosis alone"
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = clean.SOPClassUID
    item.ReferencedSOPInstanceUID = clean.SOPInstanceUID
    sc.SourceImageSequence = [item]
    return sc


def sc_path(folder: str | Path, source_uid: str) -> Path:
    """`<source SOP Instance UID>.sc.dcm` in `folder`: one capture per source instance, a retry replaces it."""
    from edgecxr.dicom.outputs import is_uid

    if not is_uid(source_uid):
        raise ValueError(f"not a valid SOP Instance UID: {source_uid[:80]!r}")
    return Path(folder) / f"{source_uid}{SUFFIX}"


def write_secondary_capture(path: str | Path, dataset: Any) -> Path:
    """Write a capture durably (temp file, fsync, rename, folder fsync), as the SR is written.

    Like the SR writer, it replaces only an earlier capture under that name, never a link, a
    folder or another kind of file (`edgecxr.dicom.outputs.replace_problem`).

    Raises:
        ValueError: something else is in the way.
    """
    from edgecxr.dicom.outputs import durable_write, encode, replace_problem

    path = Path(path)
    problem = replace_problem(path, str(dataset.SOPClassUID))
    if problem:
        raise ValueError(f"{path}: {problem}")
    return durable_write(path, encode(dataset))


def _laterality(ref: Any) -> str | None:
    """General Series Laterality (Type 2C: required for a paired body part): R or L, "" unknown, None absent.

    The source's Laterality, else its Image Laterality, when R or L; else absent for a body part
    that is not paired (a chest), and present but empty when the body part is paired or not stated.
    """
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(ref.get(keyword, "") or "").strip().upper()
        if value in ("R", "L"):
            return value
    part = str(ref.get("BodyPartExamined", "") or "").strip().upper()
    return None if part in UNPAIRED else ""


def _orientation(ref: Any) -> tuple[str, str]:
    value = getattr(ref, "PatientOrientation", None)
    if value is not None and len(value) == 2 and all(str(v) in ("A", "P", "L", "R", "H", "F") for v in value):
        return str(value[0]), str(value[1])
    return FRONTAL_ORIENTATION
