"""What a result (SR, Secondary Capture) copies from its source instance, by the attributes' DICOM Type.

Anonymisers routinely drop or empty patient and study attributes, and modalities write odd values;
a result must still be a valid object of the source's patient and study. So the source header is
first reduced to a clean reference (`reference`), and only that is handed to highdicom:

* **Type 1** (Study, Series, SOP Instance UID and SOP Class UID of the source): they cannot be
  generated (the result must name the very instance and study it reports on), so a source without
  a valid one is refused with a ValueError naming it: that instance fails cleanly, with its reason.
* **Type 2** of the Patient and General Study modules (`TYPE2`: Patient's Name, Patient ID, Birth
  Date, Sex, Study Date and Time, Referring Physician, Study ID, Accession Number): always present
  in the result, copied when the source has a valid value, else present and empty (what the
  standard asks for an unknown value). A value that is there but invalid (a Birth Date
  `1970-01-01`, a Patient's Sex `male`) is unknown too: empty, rather than an invalid result or a
  crash in the writer (highdicom parses dates and the sex).
* **Type 3** and everything else of the identification groups (`GROUPS`: study, patient, clinical
  trial, equipment and acquisition attributes such as Body Part Examined): copied when valid,
  dropped when not (a Type 3 attribute may be absent); sequences are copied as they are. Which of
  them a result keeps is the result's business (highdicom copies the Patient and Study modules).

Pixel data and the other groups never enter the reference, so it is small to copy.
"""

from __future__ import annotations

import re
from typing import Any

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(value: str) -> bool:
    """A syntactically valid DICOM UID (digits and dots, at most 64 characters): safe as a file name."""
    return 0 < len(value) <= 64 and bool(_UID.match(value))


#: Type 1 attributes of the source that a result references; no valid value: the result cannot be made
TYPE1 = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")

#: Type 2 attributes of the Patient and General Study modules: present in every result, empty when unknown
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")

#: groups of the identifying, patient, clinical trial, acquisition, relationship and study attributes
GROUPS = (0x0008, 0x0010, 0x0012, 0x0018, 0x0020, 0x0032)

#: Patient's Sex: the enumerated values (PS3.3 C.7.1.1)
SEXES = ("M", "F", "O")


def reference(source: Any) -> Any:
    """A clean copy of the source header's identification attributes (see the module docstring).

    Raises:
        ValueError: a Type 1 attribute is missing or not a valid UID (the message names it).
    """
    import pydicom

    clean = pydicom.Dataset()
    for tag in list(source.keys()):
        if tag.group not in GROUPS or tag.element == 0:
            continue
        try:
            elem = source[tag]
            if elem.VR != "SQ" and not _valid(elem.VR, elem.value):
                continue
            clean.add(pydicom.DataElement(tag, elem.VR, elem.value) if elem.VR != "SQ" else elem)
        except Exception:  # noqa: BLE001 - an element pydicom cannot even convert: not copied
            continue
    for keyword in TYPE1:
        try:
            value = str(source.get(keyword, "") or "").strip()
        except Exception:  # noqa: BLE001 - a value pydicom cannot convert is no UID
            value = "?"
        if not is_uid(value):
            what = "no" if not value else "an invalid"
            raise ValueError(f"the source instance has {what} {keyword}; a result cannot reference it")
        setattr(clean, keyword, value)
    for keyword in TYPE2:
        value = clean.get(keyword)
        setattr(clean, keyword, _type2(keyword, value))
    return clean


def _valid(vr: str, value: Any) -> bool:
    """Whether every value of an element is valid for its VR (pydicom's validation, raising)."""
    from pydicom import config
    from pydicom.multival import MultiValue
    from pydicom.valuerep import validate_value

    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    try:
        for v in values:
            validate_value(vr, v, config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def _type2(keyword: str, value: Any) -> Any:
    """The value a Type 2 attribute gets: the source's when it is valid (and parses), else empty."""
    if value is None:
        return ""
    text = str(value).strip()
    if keyword == "PatientSex":
        return text.upper() if text.upper() in SEXES else ""
    if keyword in ("PatientBirthDate", "StudyDate", "StudyTime"):
        from pydicom.valuerep import DA, TM

        try:
            (TM if keyword == "StudyTime" else DA)(text)  # what highdicom will do with it
        except (ValueError, TypeError, OverflowError):
            return ""
        return text
    return value
