"""How a run's predictions are written out: JSON, CSV and the people's table, each with the audit trail.

One home for the output formats, so `edgecxr infer`, the local service and the DICOM results
describe a prediction the same way. Every output carries the audit trail (issue 12): what ran
(model, artifact sha256, precision, backend, preprocessing, temperature, OOD threshold, edgecxr
version; `Classifier.audit`) once per run, and per input its sha256, DICOM UIDs, status, reason
and time (`Prediction`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from edgecxr.runtime.prediction import Prediction

#: the run-level audit fields, in the order the CSV and the table footer show them
AUDIT_FIELDS = ("model", "artifact_sha256", "precision", "backend", "preprocess", "temperature", "ood_threshold",
                "orientation_gate", "cxr_score", "edgecxr_version")
#: the DICOM UIDs a prediction may carry, as CSV columns
UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def printable(text: object) -> str:
    """`text` on one terminal line: control characters, newlines and undecodable bytes escaped.

    A file name may hold a newline (which would start a fake table row), an escape sequence (which
    the terminal would run) or bytes that are not UTF-8 (Python's surrogate escapes, which cannot
    be printed): they are shown as \\n, \\x1b and \\xff. The CSV and JSON outputs keep the exact name.
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def counts(preds: Sequence[Prediction]) -> dict[str, int]:
    """How many inputs were classified, failed (unreadable), rejected (input checks) or abstained (OOD)."""
    failed = sum(p.error is not None for p in preds)
    rejected = sum(p.error is None and p.status == "rejected" for p in preds)
    abstained = sum(p.error is None and p.status == "abstained" for p in preds)
    return {"count": len(preds), "classified": len(preds) - failed - rejected - abstained, "failed": failed,
            "rejected": rejected, "abstained": abstained}


def results_document(preds: Sequence[Prediction], audit: Mapping[str, Any], classes: Sequence[str],
                     backend: Mapping[str, Any] | None = None, top_k: int | None = None) -> dict[str, Any]:
    """The JSON document of `infer --json` (and the service's /v1/classify): audit, counts, predictions."""
    doc: dict[str, Any] = {"model": audit.get("model"), "audit": dict(audit)}
    if backend is not None:
        doc["backend"] = dict(backend)
    doc["classes"] = list(classes)
    doc.update(counts(preds))
    doc["predictions"] = [p.to_dict(top_k) for p in preds]
    return doc


def predictions_csv(preds: Sequence[Prediction], classes: Sequence[str], audit: Mapping[str, Any] | None = None) -> str:
    """CSV text: one row per input with its probabilities, status, reason and audit columns.

    The run-level audit fields repeat on every row, so a row copied out of the file still says
    what produced it. The source is the file name exactly as given (the csv module quotes one with
    a comma, quote or newline); `cli.output._write_output` writes a name that is not UTF-8 back as
    its own bytes.
    """
    audit = audit or {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    # csv quotes a field holding a newline but not one holding a lone carriage return (not in the
    # "\n" line terminator), which readers then take for a line break: quote such rows whole.
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(["source", "label", "top1", *[f"p_{c}" for c in classes], "preprocess_ms", "inference_ms", "error",
                     "status", "reason", "ood_score", "orientation", "input_sha256", *UID_COLUMNS, "time", *AUDIT_FIELDS])
    run = ["" if audit.get(k) is None else str(audit[k]) for k in AUDIT_FIELDS]
    for p in preds:
        probs = [f"{p.probabilities[c]:.6f}" if c in p.probabilities else "" for c in classes]
        top1 = "" if p.top1 is None else f"{p.top1:.6f}"
        uids = [(p.dicom or {}).get(k, "") for k in UID_COLUMNS]
        ood = "" if p.ood_score is None else f"{p.ood_score:.4f}"
        row = [str(p.source), p.label or "", top1, *probs, f"{p.preprocess_ms:.3f}", f"{p.inference_ms:.3f}", p.error or "",
               p.status, p.reason or "", ood, getattr(p, "orientation", None) or "", p.input_sha256 or "", *uids, p.time,
               *run]
        (quoted if any("\r" in field for field in row) else writer).writerow(row)
    return buf.getvalue()


def predictions_table(preds: Sequence[Any], top_k: int | None = None) -> str:
    """Aligned text table for people: source, label, probability (or the top-k), or the error.

    One line per image whatever its name: newlines, control characters and bytes that are not
    UTF-8 in a file name are escaped (`printable`); --csv and --json keep the exact name. An
    abstained input shows ABSTAINED, its reason and (for inspection) the label it would have had.
    """
    rows = []
    for p in preds:
        source = printable(p.source)
        if p.error is not None:
            rows.append((source, "FAILED", printable(p.error)))
        elif p.status == "abstained":
            rows.append((source, "ABSTAINED", printable(f"{p.reason or ''} (model said {p.label} {p.top1:.3f})")))
        elif p.status != "ok":
            rows.append((source, p.status.upper(), printable(p.reason or "")))
        elif top_k:
            rows.append((source, printable(p.label or ""), "  ".join(f"{printable(c)} {v:.3f}" for c, v in p.top_k(top_k))))
        else:
            rows.append((source, printable(p.label or ""), f"{p.top1:.3f}"))
    header = ("source", "label", f"top-{top_k}" if top_k else "probability")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in [header, *rows])


def audit_footer(audit: Mapping[str, Any]) -> str:
    """One line under the table: what produced these answers (the JSON and CSV carry the same)."""
    sha = str(audit.get("artifact_sha256") or "unrecorded")[:12]
    temp = audit.get("temperature")
    ood = audit.get("ood_threshold")
    parts = [
        f"model {printable(audit.get('model'))}",
        f"{audit.get('backend')} {audit.get('precision')}",
        f"sha256 {sha}",
        f"preprocess {audit.get('preprocess')}",
        # a vector / Dirichlet calibrator has no temperature: name it rather than say "temperature none"
        str(audit["calibrator"]) if audit.get("calibrator") and temp is None else
        "temperature " + ("none" if temp is None else f"{temp:.3f}"),
        "OOD threshold " + ("none" if ood is None else f"{ood:.4g}"),
        "orientation gate " + str(audit.get("orientation_gate") or "off").split(":")[0],
        "CXR score " + str(audit.get("cxr_score") or "off").split(":")[0],
        f"edgecxr {audit.get('edgecxr_version')}",
    ]
    return "audit: " + " | ".join(parts)
