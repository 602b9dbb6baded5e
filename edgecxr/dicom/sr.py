"""The DICOM Structured Report of one prediction: what a PACS or a viewer shows beside the image.

Written with highdicom as a Comprehensive SR holding a TID 1500 Measurement Report, because that
is the template PACS viewers and highdicom itself know how to read back:

* the report references its source image (as evidence, and as the group's source image: Study/
  Series/SOP Instance UIDs and SOP Class) and belongs to the source's study and patient, copied by
  their DICOM Type (`edgecxr.dicom.attributes`: an anonymised source without Patient's Birth Date
  gives an empty one, not a crash); no TID 1600 image library: highdicom's needs attributes such
  as PatientOrientation that many CR/DX lack;
* one summary group (TID 1501): the status (ok / rejected / abstained / failed), the answer as
  DCM "Finding" (the top-1 class, only when the status is ok: the one finding a viewer lists), the
  class probabilities as measurements (TID 300 numeric items: concept = the class's SNOMED CT
  code, or a 99EDGECXR code for a class without one; method DCM 122157 "Probability"; unit UCUM
  "1"), the OOD score when there is one, the reason and the input's sha256 as text; an abstained
  input keeps its top-1 class as the private "Top class (not for use)", never as a finding;
* the summary group names the algorithm (TID 4019): model name, edgecxr version and the audit
  trail (artifact sha256, precision, backend, preprocessing, temperature, OOD threshold) as
  parameters (once: highdicom's cost grows with every content item);
  the device observer is the model, the SR's Manufacturer is edgecxr and SoftwareVersions its version.

Why probabilities are measurements and not findings (TID 1500 practice): a viewer lists every
"Finding" item as a finding, so a group per class coded as a finding showed every diagnosis, at
probability 0.003 too. Only the answer is a finding; the probabilities are numbers about it.

Codes: standard where a standard code exists (DCM for the template, titles, "Finding",
"Probability", the algorithm items; SCT for the procedure and the diagnoses; UCUM for the unit),
the private scheme 99EDGECXR for the rest (status and its values, reason, input sha256, OOD
score, top class of an abstained input). docs/DICOM.md lists them all. A rejected or failed input still gets a report (status and
reason, no probabilities), so the sender learns why there is no answer.

UIDs are derived from the source SOP Instance UID and the artifact sha256: classifying the same
instance with the same model again gives the same SR SOP Instance UID and file name, so a retry
after a crash replaces the report instead of adding a second one (here and in the PACS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.dicom import require
from edgecxr.runtime.prediction import Prediction

#: the private coding scheme of concepts no standard names
SCHEME = "99EDGECXR"

#: classes -> (code value, scheme, meaning) of the standard concept for that diagnosis
CLASS_CODES: dict[str, tuple[str, str, str]] = {
    "covid": ("840539006", "SCT", "COVID-19"),  # Disease caused by SARS-CoV-2 (disorder)
    "normal": ("17621005", "SCT", "Normal"),
    "pneumonia": ("233604007", "SCT", "Pneumonia"),
    "pneumonia_bacterial": ("53084003", "SCT", "Bacterial pneumonia"),
    "pneumonia_viral": ("75570004", "SCT", "Viral pneumonia"),
}

#: the concepts of the report (name -> (value, scheme, meaning))
CONCEPTS: dict[str, tuple[str, str, str]] = {
    "title": ("126000", "DCM", "Imaging Measurement Report"),
    "procedure": ("399208008", "SCT", "Plain X-ray of chest"),
    "finding": ("121071", "DCM", "Finding"),
    "unit": ("1", "UCUM", "no units"),
    "probability": ("122157", "DCM", "Probability"),
    "top_class": ("top-class", SCHEME, "Top class (not for use)"),
    "status": ("status", SCHEME, "Classification status"),
    "reason": ("reason", SCHEME, "Reason"),
    "input_sha256": ("input-sha256", SCHEME, "Input sha256"),
    "ood_score": ("ood-score", SCHEME, "Out-of-distribution score"),
}

#: Prediction status (plus "failed": the input could not be read) -> its 99EDGECXR code meaning
STATUS_MEANINGS = {"ok": "Classified", "rejected": "Rejected by input checks",
                   "abstained": "Abstained (out of distribution)", "failed": "Failed (input unreadable)"}

#: the audit fields written as algorithm parameters, in this order
AUDIT_PARAMETERS = ("artifact_sha256", "precision", "backend", "preprocess", "temperature", "ood_method",
                    "ood_threshold", "input_checks", "orientation_gate", "cxr_score")

SUMMARY_ID = "edgecxr summary"


def code(name_or_triple: str | tuple[str, str, str]) -> Any:
    """A highdicom CodedConcept of CONCEPTS[name], or of a (value, scheme, meaning) triple."""
    hd = require("highdicom", "writing DICOM results")
    value, scheme, meaning = CONCEPTS[name_or_triple] if isinstance(name_or_triple, str) else name_or_triple
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def class_code(name: str) -> tuple[str, str, str]:
    """The standard code of a class, else a 99EDGECXR code whose value is the class name."""
    return CLASS_CODES.get(name.lower(), (name[:16], SCHEME, name[:64]))


def status_of(pred: Prediction) -> str:
    """ok / rejected / abstained, or failed when the input could not be read at all."""
    return "failed" if pred.error is not None else pred.status


def result_uid(source_uid: str, audit: Mapping[str, Any], kind: str) -> str:
    """A UID derived from the source instance, the model artifact and the result kind (stable across retries)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[source_uid, str(audit.get("artifact_sha256") or audit.get("model")), kind])


def build_sr(pred: Prediction, audit: Mapping[str, Any], source: Any, classes: Sequence[str]) -> Any:
    """The SR dataset (a highdicom ComprehensiveSR) reporting `pred` for the DICOM `source` it classified.

    `source` is the source instance's header (pixels are not needed; a full Dataset is fine);
    `audit` is `Classifier.audit`; `classes` the model's class order.

    Raises:
        ValueError: the source lacks what a report must reference (a valid Study/Series/SOP Instance or
            SOP Class UID: Type 1), or its SOP class is not a standard one. Missing or invalid Type 2
            patient and study attributes are not an error: they are present and empty in the report.
    """
    hd = require("highdicom", "writing DICOM Structured Reports")
    from edgecxr.dicom.attributes import reference

    source = reference(source)  # Type 1 checked, Type 2 present (empty when unknown), invalid values dropped
    model = str(audit.get("model") or "model")
    version = str(audit.get("edgecxr_version") or "unknown")
    params = [f"{k}={audit.get(k)}" for k in AUDIT_PARAMETERS if audit.get(k) is not None]
    algorithm = hd.sr.AlgorithmIdentification(name=model, version=version, parameters=params or None)
    source_ref = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=str(source.SOPClassUID), referenced_sop_instance_uid=str(source.SOPInstanceUID))
    src_uid = str(source.SOPInstanceUID)

    status = status_of(pred)
    evaluations = [hd.sr.QualitativeEvaluation(code("status"), code((status, SCHEME, STATUS_MEANINGS[status])))]
    if pred.label is not None:  # the answer is a finding only when it is one; an abstention keeps it for inspection
        name = "finding" if status == "ok" else "top_class"
        evaluations.append(hd.sr.QualitativeEvaluation(code(name), code(class_code(pred.label))))
    measurements = [
        hd.sr.Measurement(code(class_code(cls)), float(pred.probabilities[cls]), code("unit"),
                          method=code("probability"))
        for cls in classes if cls in pred.probabilities]
    if pred.ood_score is not None:
        measurements.append(hd.sr.Measurement(code("ood_score"), float(pred.ood_score), code("unit")))
    tracking = hd.sr.TrackingIdentifier(uid=result_uid(src_uid, audit, f"group:{SUMMARY_ID}"), identifier=SUMMARY_ID)
    summary = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, source_images=[source_ref], algorithm_id=algorithm,
        qualitative_evaluations=evaluations, measurements=measurements or None)
    reason = pred.error if pred.error is not None else pred.reason
    texts = [("reason", reason), ("input_sha256", pred.input_sha256)]
    for concept, value in texts:
        if value:
            summary[0].ContentSequence.append(hd.sr.TextContentItem(
                name=code(concept), value=str(value)[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    groups = [summary]

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid("device", audit, "observer"), name=model[:64], manufacturer_name="edgecxr", model_name=model[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=code("procedure"), imaging_measurements=groups,
        title=code("title"))  # no image library: it requires attributes (PatientOrientation...) many CR/DX lack
    scheme = hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=SCHEME, name="edgecxr private concepts", responsible_organization="edgecxr")
    try:
        return hd.sr.ComprehensiveSR(
            evidence=[source], content=report[0],
            series_instance_uid=result_uid(str(source.SeriesInstanceUID), audit, "sr-series"), series_number=990,
            sop_instance_uid=result_uid(src_uid, audit, "sr"), instance_number=1, manufacturer="edgecxr",
            is_complete=True, is_final=False, is_verified=False,
            series_description=f"edgecxr {model} classification"[:64], manufacturer_model_name=model[:64],
            software_versions=version[:64], coding_schemes=[scheme])
    except KeyError as exc:  # highdicom looks the source's SOP class up to copy its patient and study modules
        raise ValueError(f"the source's SOP Class UID {source.SOPClassUID} is not a standard one ({exc}); "
                         "no report can copy its patient and study") from None


@dataclass
class SRContent:
    """What an SR written by `build_sr` says, read back with highdicom (tests, tools, a PACS-side check)."""

    sop_instance_uid: str
    referenced: dict[str, str]  # StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID
    status: str
    label: str | None
    probabilities: dict[str, float]
    reason: str | None
    input_sha256: str | None
    model: str | None
    edgecxr_version: str | None
    parameters: dict[str, str]


def read_sr(sr: Any) -> SRContent:
    """Parse an SR (a path or a Dataset) written by `build_sr` back through highdicom's TID 1500 reader."""
    hd = require("highdicom", "reading DICOM Structured Reports")
    if isinstance(sr, (str, Path)):
        sr = hd.sr.srread(sr)
    elif not isinstance(sr, hd.sr.ComprehensiveSR):
        sr = hd.sr.ComprehensiveSR.from_dataset(sr)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    series = evidence.ReferencedSeriesSequence[0]
    instance = series.ReferencedSOPSequence[0]
    referenced = {"StudyInstanceUID": str(evidence.StudyInstanceUID),
                  "SeriesInstanceUID": str(series.SeriesInstanceUID),
                  "SOPInstanceUID": str(instance.ReferencedSOPInstanceUID),
                  "SOPClassUID": str(instance.ReferencedSOPClassUID)}
    report = hd.sr.MeasurementReport.from_sequence([sr], copy=False)
    status, label, probs, texts, params, model, version = "unknown", None, {}, {}, {}, None, None
    for grp in report.get_image_measurement_groups():
        for item in grp.source_images:
            if str(item.referenced_sop_instance_uid) != referenced["SOPInstanceUID"]:
                raise ValueError("a measurement group references another image than the report's evidence")
        alg = _algorithm(grp)
        if alg:
            model, version, params = alg
        if grp.tracking_identifier != SUMMARY_ID:
            continue
        for item in grp[0].ContentSequence:
            concept = item.ConceptNameCodeSequence[0].CodeValue
            if item.ValueType == "TEXT":
                texts[concept] = str(item.TextValue)
            elif item.ValueType == "CODE" and concept == CONCEPTS["status"][0]:
                status = str(item.ConceptCodeSequence[0].CodeValue)
            elif item.ValueType == "CODE" and concept in (CONCEPTS["finding"][0], CONCEPTS["top_class"][0]):
                label = _class_name(item.ConceptCodeSequence[0])
        for m in grp.get_measurements():
            if m.method is not None and (m.method.value, m.method.scheme_designator) == CONCEPTS["probability"][:2]:
                probs[_class_name(m.name)] = float(m.value)
    return SRContent(str(sr.SOPInstanceUID), referenced, status, label, probs,
                     texts.get(CONCEPTS["reason"][0]), texts.get(CONCEPTS["input_sha256"][0]), model, version, params)


def _class_name(concept: Any) -> str:
    """The class a coded concept (a finding's value, a probability's name) stands for."""
    value = getattr(concept, "value", None) or str(getattr(concept, "CodeValue", ""))
    scheme = getattr(concept, "scheme_designator", None) or str(getattr(concept, "CodingSchemeDesignator", ""))
    meaning = getattr(concept, "meaning", None) or str(getattr(concept, "CodeMeaning", ""))
    if scheme != SCHEME:
        for name, (v, sch, _) in CLASS_CODES.items():
            if (v, sch) == (value, scheme):
                return name
    return meaning


def _algorithm(grp: Any) -> tuple[str, str, dict[str, str]] | None:
    """(name, version, parameters) of a group's TID 4019 Algorithm Identification items (siblings in the group)."""
    name = version = None
    params: dict[str, str] = {}
    for item in grp[0].ContentSequence:
        if item.ValueType != "TEXT":
            continue
        concept = item.ConceptNameCodeSequence[0].CodeValue
        if concept == "111001":  # Algorithm Name
            name = str(item.TextValue)
        elif concept == "111003":  # Algorithm Version
            version = str(item.TextValue)
        elif concept == "111002":  # Algorithm Parameters
            key, _, value = str(item.TextValue).partition("=")
            params[key] = value
    return None if name is None else (name, version or "", params)
