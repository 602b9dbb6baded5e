"""`edgecxr data check`: verify a manifest before anything is trained or calibrated on it.

A leaked patient (the same child in train and test) or a silently corrupt file inflates every
accuracy number downstream, and is invisible once a model exists. So this lists every problem at
once instead of stopping at the first: rows outside the manifest's folder (absolute paths, `..`;
their files are not touched), missing files, sha256 mismatches, unknown labels or splits,
patient ids or patient groups that appear in two splits, the same file or content in two rows,
and (with `decode=True`) images that do not decode. The CLI prints the report; this module only
builds it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from edgecxr.core.errors import ImageLoadError
from edgecxr.core.fileutil import sha256_file
from edgecxr.data.io import load_image
from edgecxr.data.manifest import (
    CLASSES_4,
    SPLITS,
    Record,
    outside_is_allowed,
    outside_reason,
    read_manifest,
    sha256_mismatch,
)

TOTAL = "total"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest. `kind` is a stable keyword for scripts (see KINDS)."""

    kind: str
    message: str
    line: int | None = None
    path: str | None = None


#: Problem kinds, in the order they are reported.
KINDS = ("outside", "missing", "sha256", "label", "split", "patient", "duplicate", "leak", "decode")


@dataclass
class CheckReport:
    """Result of `check_manifest`: counts for the tables and the list of problems.

    `images[label][split]` and `patients[label][split]` include a "total" row and column;
    patient totals count distinct ids (a patient with two labels counts once in the total row).
    """

    manifest: str
    n_images: int
    labels: list[str]
    splits: list[str]
    images: dict[str, dict[str, int]]
    patients: dict[str, dict[str, int]]
    n_patient_groups: int
    hashed: int = 0
    without_sha256: int = 0
    decoded: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: facts that are not errors but change what a split can show (a split without a class)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `edgecxr data check --json` prints)."""
        data = asdict(self)
        data["ok"] = self.ok
        data["problem_counts"] = self.problem_counts()
        return data

    def problem_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        return counts


def check_manifest(
    path: str | Path,
    *,
    verify_hash: bool = True,
    decode: bool = False,
    progress: bool = True,
    allow_outside: bool | None = None,
) -> CheckReport:
    """Check a manifest and every file it lists; never stops at the first problem.

    Args:
        path: the manifest CSV (relative paths resolve against its folder).
        verify_hash: recompute each file's sha256 and compare with the `sha256` column
            (rows without one are counted in `without_sha256`).
        decode: also decode every image with `load_image` (slow; finds corrupt files).
        progress: show a tqdm bar on stderr while hashing/decoding (only on a terminal).
        allow_outside: accept rows outside the manifest's folder; otherwise each is an "outside"
            problem and its file is neither hashed nor decoded. None: as `read_manifest` decides
            (`edgecxr.data.manifest.outside_allowed`; `edgecxr data check` refuses them).

    Raises:
        DataError: the manifest itself cannot be parsed (missing columns, not CSV, no rows).
    """
    records = read_manifest(path, allow_outside=True)  # listed below as problems, not raised on the first
    problems: list[Problem] = []
    inside = records
    if not (outside_is_allowed() if allow_outside is None else allow_outside):
        inside = []
        for rec in records:
            why = outside_reason(rec.relative_path)
            if why is None:
                inside.append(rec)
            else:
                problems.append(Problem("outside", f"{why}; not read (--allow-outside accepts it)", rec.line, rec.relative_path))

    for rec in records:
        if rec.label not in CLASSES_4:
            problems.append(
                Problem("label", f"unknown label {rec.label!r} (known: {', '.join(CLASSES_4)})", rec.line, rec.relative_path)
            )
        if rec.split not in SPLITS:
            shown = repr(rec.split) if rec.split else "(empty)"
            problems.append(
                Problem("split", f"unknown split {shown} (known: {', '.join(SPLITS)})", rec.line, rec.relative_path)
            )
        if not rec.patient_id:
            problems.append(Problem("patient", "empty patient_id; leakage cannot be checked", rec.line, rec.relative_path))
        if rec.sha256 is not None and not _SHA256.match(rec.sha256):
            problems.append(Problem("sha256", f"malformed sha256 {rec.sha256!r}", rec.line, rec.relative_path))

    content = _check_files(inside, problems, verify_hash=verify_hash, decode=decode, progress=progress)
    problems.extend(_duplicates(inside, content))
    problems.extend(_leaks(records))
    problems.sort(key=lambda p: (KINDS.index(p.kind) if p.kind in KINDS else len(KINDS), p.line or 0, p.message))

    labels = list(CLASSES_4) + sorted({r.label for r in records} - set(CLASSES_4))
    splits = list(SPLITS) + sorted({r.split for r in records} - set(SPLITS))
    return CheckReport(
        manifest=str(path),
        n_images=len(records),
        labels=labels,
        splits=splits,
        images=count_images(records, labels, splits),
        patients=count_patients(records, labels, splits),
        n_patient_groups=len({r.patient_group for r in records if r.patient_group}),
        hashed=content.hashed,
        without_sha256=sum(1 for r in records if r.sha256 is None),
        decoded=content.decoded,
        problems=problems,
        warnings=[p.message for p in _class_coverage(records)],
    )


def _class_coverage(records: list[Record]) -> list[Problem]:
    """A split that lacks a whole class: a model trained, calibrated or gated on it never sees that
    class, and a gate on it cannot measure that class (no COVID images: no COVID sensitivity)."""
    present: dict[str, set[str]] = defaultdict(set)
    for r in records:
        present[r.split].add(r.label)
    return [
        Problem("warning", f"split {split!r} has no {', '.join(repr(c) for c in missing)} images")
        for split in SPLITS
        if split in present and (missing := [c for c in CLASSES_4 if c not in present[split]])
    ]


def count_images(records: Iterable[Record], labels: list[str], splits: list[str]) -> dict[str, dict[str, int]]:
    """Images per label and split, with "total" row and column."""
    table = {label: dict.fromkeys([*splits, TOTAL], 0) for label in [*labels, TOTAL]}
    for r in records:
        for row in (r.label, TOTAL):
            if row in table:
                table[row][r.split] = table[row].get(r.split, 0) + 1
                table[row][TOTAL] += 1
    return table


def count_patients(records: Iterable[Record], labels: list[str], splits: list[str]) -> dict[str, dict[str, int]]:
    """Distinct patient ids per label and split; totals count each id once."""
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in records:
        for row in (r.label, TOTAL):
            ids[(row, r.split)].add(r.patient_id)
            ids[(row, TOTAL)].add(r.patient_id)
    return {row: {col: len(ids.get((row, col), ())) for col in [*splits, TOTAL]} for row in [*labels, TOTAL]}


@dataclass
class _Content:
    sha: dict[int, str] = field(default_factory=dict)  # record index -> sha256 (actual or declared)
    hashed: int = 0
    decoded: int = 0


def _check_files(
    records: list[Record], problems: list[Problem], *, verify_hash: bool, decode: bool, progress: bool
) -> _Content:
    content = _Content()
    work = verify_hash or decode
    bar = tqdm(
        records,
        desc="checking" if not decode else "hashing+decoding" if verify_hash else "decoding",
        unit="img",
        disable=None if (progress and work) else True,
        leave=False,
    )
    for i, rec in enumerate(bar):
        if not rec.path.is_file():
            what = "is a directory" if rec.path.is_dir() else "file not found"
            problems.append(Problem("missing", f"{what}: {rec.path}", rec.line, rec.relative_path))
            continue
        declared = rec.sha256 if rec.sha256 and _SHA256.match(rec.sha256) else None
        if verify_hash:
            try:
                actual = sha256_file(rec.path)
            except OSError as exc:
                problems.append(Problem("missing", f"cannot read {rec.path}: {exc.strerror or exc}", rec.line, rec.relative_path))
                continue
            content.hashed += 1
            content.sha[i] = actual
            mismatch = sha256_mismatch(rec, actual) if declared is not None else None
            if mismatch is not None:  # the message every stage that reads the file raises (checked_sha256)
                problems.append(Problem("sha256", mismatch, rec.line, rec.relative_path))
        elif declared is not None:
            content.sha[i] = declared
        if decode:
            try:
                load_image(rec.path)
                content.decoded += 1
            except ImageLoadError as exc:
                problems.append(Problem("decode", f"does not decode: {exc.reason}", rec.line, rec.relative_path))
    return content


def _duplicates(records: list[Record], content: _Content) -> list[Problem]:
    """The same relative path twice, or the same bytes under two rows (a leak if splits differ)."""
    out = []
    by_path: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_path[str(r.path)].append(r)
    for rows in by_path.values():
        if len(rows) > 1:
            lines = ", ".join(str(r.line) for r in rows)
            out.append(Problem("duplicate", f"file listed {len(rows)} times (lines {lines})", rows[1].line, rows[0].relative_path))
    by_sha: dict[str, list[Record]] = defaultdict(list)
    for i, sha in content.sha.items():
        by_sha[sha].append(records[i])
    for rows in by_sha.values():
        if len({str(r.path) for r in rows}) < 2:
            continue
        desc = "; ".join(f"line {r.line} {r.relative_path} ({r.split})" for r in rows)
        if len({r.split for r in rows}) > 1:
            out.append(Problem("leak", f"identical image content in two splits: {desc}", rows[1].line, rows[1].relative_path))
        else:
            out.append(Problem("duplicate", f"identical image content in several rows: {desc}", rows[1].line, rows[1].relative_path))
    return out


def _leaks(records: list[Record]) -> list[Problem]:
    """Patient ids and patient groups in more than one split; patient ids in two groups."""
    out = []
    leaked_ids = set()
    for key, kind in (("patient_id", "patient id"), ("patient_group", "patient group")):
        splits_of: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for r in records:
            value = getattr(r, key)
            if value:
                splits_of[value][r.split].append(r.line)
        for value in sorted(splits_of):
            by_split = splits_of[value]
            if len(by_split) < 2:
                continue
            if key == "patient_id":
                leaked_ids.add(value)
            elif value in leaked_ids:
                continue  # the same leak, already reported for the patient id
            where = ", ".join(f"{s} (line {lines[0]}{'...' if len(lines) > 1 else ''})" for s, lines in sorted(by_split.items()))
            out.append(Problem("leak", f"{kind} {value!r} is in {len(by_split)} splits: {where}"))
    groups_of: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.patient_id:
            groups_of[r.patient_id].add(r.patient_group)
    for pid in sorted(groups_of):
        if len(groups_of[pid]) > 1:
            out.append(Problem("patient", f"patient id {pid!r} is in several patient groups: {sorted(groups_of[pid])}"))
    return out
