"""`edgecxr data prepare`: a manifest with a patient-level split from the public downloads.

Users cannot be sent ../shared/data/cxr (the ieee8023 images carry per-image licenses), so this
rebuilds the same kind of manifest from the two layouts they download themselves:

* covid-chestxray-dataset (ieee8023): `metadata.csv` (patientid, finding, view, modality,
  filename[, folder, license]) + `images/`. Kept: modality "X-ray", view PA / AP / AP Supine,
  finding containing "COVID-19"; patient id `ieee:<patientid>`.
* Kaggle "Chest X-Ray Images (Pneumonia)" (Kermany et al.): `*/NORMAL/*.jpeg` and
  `*/PNEUMONIA/person<N>_{bacteria,virus}_<M>.jpeg` at any depth (train/test/val, and the nested
  copy the Kaggle zip contains). Patient ids as in DATA_SOURCES.md: `kermany:person<N>` for
  pneumonia (bacterial and viral files of one person<N> are one patient), and
  `kermany:IM-xxxx` / `kermany:NORMAL2-IM-xxxx` for normal (a best guess; the names carry no id).

Identical files (same sha256) are listed once; patient ids that share a file are merged into one
`patient_group`. The curated set's near-duplicate merge (thumbnail correlation) is not
reproduced. Images are not resized: the manifest references them in place (relative paths from
the output folder) or, with copy, points to copies under `<out>/images/<label>/`.

The split is that of ../shared/data/cxr/make_splits.py, without pandas (`assign_splits`): each
patient group gets its majority class, groups are shuffled with numpy's default_rng(seed), stably
sorted largest first, and each goes to the split with the largest deficit against the fractions.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from edgecxr.core.errors import ArgumentError, DataError
from edgecxr.core.fileutil import atomic_write_text, sha256_file
from edgecxr.data.manifest import CLASSES_4, SPLITS

DEFAULT_SEED = 1729
DEFAULT_FRACTIONS = (0.7, 0.1, 0.1, 0.1)

#: Columns of the written manifest (the first seven are those of ../shared/data/cxr/manifest.csv).
COLUMNS = (
    "relative_path",
    "label",
    "split",
    "patient_id",
    "patient_group",
    "source",
    "sha256",
    "source_path",
    "license",
    "view",
    "finding",
)

COVID_SOURCE = "ieee8023/covid-chestxray-dataset"
KERMANY_SOURCE = "kermany2018 (Kaggle chest_xray)"
KERMANY_LICENSE = "CC BY 4.0 (Kermany, Zhang, Goldbaum 2018; Mendeley Data doi:10.17632/rscbjbr9sj.2)"
COVID_VIEWS = ("PA", "AP", "AP Supine")
COVID_COLUMNS = ("patientid", "finding", "view", "modality", "filename")
_RASTER = (".png", ".jpg", ".jpeg")

_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL_NAME = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    """One source image before the split: where it is, its label and patient id."""

    path: Path
    label: str
    patient_id: str
    source: str
    source_path: str
    license: str = ""
    view: str = ""
    finding: str = ""


@dataclass
class PrepareResult:
    """What `prepare_dataset` wrote and what it left out (reason -> count, with examples)."""

    manifest: Path
    n_images: int
    counts: dict[str, dict[str, int]]
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float, float]:
    """Parse "0.7,0.1,0.1,0.1" (train, val, calib, test); they must be >= 0 and sum to 1."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise DataError(f"fractions must be 4 numbers like 0.7,0.1,0.1,0.1; got {text!r}") from None
    if len(values) != len(SPLITS):
        raise DataError(f"fractions need {len(SPLITS)} values ({', '.join(SPLITS)}); got {len(values)}")
    if any(not np.isfinite(v) or v < 0 for v in values) or values[0] <= 0:
        raise DataError(f"fractions must be >= 0 with train > 0; got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise DataError(f"fractions must sum to 1; got {values} (sum {sum(values):.6g})")
    return tuple(values)  # type: ignore[return-value]


def assign_splits(
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    seed: int = DEFAULT_SEED,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    classes: Sequence[str] = CLASSES_4,
) -> list[str]:
    """Patient-level, class-stratified, seeded split: one split name per row (see make_splits.py).

    Rows are grouped by `groups`; a group's class is its most frequent label (ties: `classes`
    order). Per class, groups in seeded random order are stably sorted largest first, and each is
    put in the split whose image count is furthest below its fraction of the class (ties: larger
    fraction, then SPLITS order). Reproduces the `split` column of ../shared/data/cxr exactly.
    """
    if len(labels) != len(groups):
        raise ValueError("labels and groups must have the same length")
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(f"unknown label(s) {unknown}; known: {list(classes)}")
    plan = list(zip(SPLITS, fractions, strict=True))
    count: dict[str, Counter[str]] = defaultdict(Counter)
    for label, group in zip(labels, groups, strict=True):
        count[group][label] += 1
    primary = {g: min(c, key=lambda lab: (-c[lab], classes.index(lab))) for g, c in count.items()}
    size = {g: sum(c.values()) for g, c in count.items()}
    keys = sorted(count)
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(len(keys))]
    split_of: dict[str, str] = {}
    for cls in classes:
        members = [g for g in order if primary[g] == cls]
        total = sum(size[g] for g in members)
        current = dict.fromkeys(SPLITS, 0)
        for g in sorted(members, key=lambda g: -size[g]):  # stable: keeps the seeded order among equals
            name = max(plan, key=lambda sf: (sf[1] * total - current[sf[0]], sf[1]))[0]
            split_of[g] = name
            current[name] += size[g]
    return [split_of[g] for g in groups]


def find_covid(root: str | Path) -> tuple[list[Candidate], Counter[str], dict[str, list[str]]]:
    """Selected COVID-19 X-rays of a covid-chestxray-dataset folder (or its single subfolder).

    Returns (candidates, skipped reason -> count, reason -> a few examples).

    Raises:
        DataError: the folder is not in that layout.
    """
    root = _find_dir(Path(root), lambda d: (d / "metadata.csv").is_file(), "covid-chestxray-dataset",
                     "metadata.csv and images/")
    meta = root / "metadata.csv"
    try:
        text = meta.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta}: cannot read ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COVID_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(
            f"{meta}: not covid-chestxray-dataset metadata; missing column(s) {missing} (has {reader.fieldnames})"
        )
    out: list[Candidate] = []
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    for row in reader:
        modality, view = (row.get("modality") or "").strip(), (row.get("view") or "").strip()
        finding, name = (row.get("finding") or "").strip(), (row.get("filename") or "").strip()
        if modality != "X-ray" or view not in COVID_VIEWS or "COVID-19" not in finding:
            continue  # not selected: no need to report the many CT / lateral / other-finding rows
        folder = (row.get("folder") or "images").strip() or "images"
        path = root / folder / name
        if not name or not path.is_file():
            _skip(skipped, examples, "covid: file listed in metadata.csv not found", str(path))
            continue
        if path.suffix.lower() not in _RASTER:
            _skip(skipped, examples, "covid: not a PNG/JPEG", str(path))
            continue
        pid = (row.get("patientid") or "").strip()
        if not pid:
            _skip(skipped, examples, "covid: empty patientid", name)
            continue
        out.append(
            Candidate(
                path, "covid", f"ieee:{pid}", COVID_SOURCE, path.relative_to(root).as_posix(),
                (row.get("license") or "").strip(), view, finding,
            )
        )
    return out, skipped, examples


def find_kermany(root: str | Path) -> tuple[list[Candidate], Counter[str], dict[str, list[str]]]:
    """Normal / bacterial / viral images of a Kaggle chest_xray folder (NORMAL/ and PNEUMONIA/ at any depth).

    Raises:
        DataError: no NORMAL or PNEUMONIA folder below `root`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    # Shallowest first, so the top-level copy wins over the nested duplicate the Kaggle zip holds.
    class_dirs = sorted(
        (d for d in root.rglob("*")
         if d.is_dir() and d.name.upper() in ("NORMAL", "PNEUMONIA") and "__MACOSX" not in d.parts),
        key=lambda d: (len(d.parts), d.as_posix()),
    )
    if not class_dirs:
        raise DataError(
            f"{root}: not a Kaggle chest_xray (Kermany) folder: no */NORMAL/ or */PNEUMONIA/ folders below it"
        )
    out: list[Candidate] = []
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    for d in class_dirs:
        for path in sorted(p for p in d.iterdir() if p.is_file()):
            name = path.name
            if name.startswith("."):
                continue
            if path.suffix.lower() not in _RASTER:
                _skip(skipped, examples, "kermany: not a PNG/JPEG", str(path))
                continue
            if d.name.upper() == "NORMAL":
                m = _NORMAL_NAME.match(name)
                if not m:
                    _skip(skipped, examples, "kermany: NORMAL file name without IM-xxxx patient block", name)
                    continue
                label, pid = "normal", m.group(1).upper()
            else:
                m = _PNEUMONIA_NAME.match(name)
                if not m:
                    _skip(skipped, examples, "kermany: PNEUMONIA file name not person<N>_bacteria/virus_<M>", name)
                    continue
                label = "pneumonia_bacterial" if m.group(2).lower() == "bacteria" else "pneumonia_viral"
                pid = m.group(1).lower()
            out.append(
                Candidate(path, label, f"kermany:{pid}", KERMANY_SOURCE, path.relative_to(root).as_posix(), KERMANY_LICENSE)
            )
    return out, skipped, examples


def prepare_dataset(
    out_dir: str | Path,
    *,
    covid_dir: str | Path | None = None,
    kermany_dir: str | Path | None = None,
    seed: int = DEFAULT_SEED,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    copy: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Write `<out_dir>/manifest.csv` (and, with `copy`, `<out_dir>/images/`) from the downloads.

    Args:
        out_dir: output folder (created); relative paths in the manifest are relative to it.
        covid_dir, kermany_dir: the two downloads; at least one is needed.
        seed, fractions: split parameters (train, val, calib, test).
        copy: copy the images under out_dir instead of referencing them where they are.
        overwrite: replace an existing manifest.csv.
        progress: tqdm bar on stderr while hashing / copying (only on a terminal).

    Raises:
        DataError: a folder is in neither layout, nothing was found, or the manifest exists.
    """
    if covid_dir is None and kermany_dir is None:
        raise ArgumentError("give at least one of the covid-chestxray-dataset and Kaggle chest_xray folders",
                            params=("covid_dir", "kermany_dir"))
    fractions = parse_fractions(fractions)
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    if manifest.exists() and not overwrite:
        raise DataError(f"{manifest} already exists; it is replaced only when forced", params=("overwrite",))

    candidates: list[Candidate] = []
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    for folder, finder in ((covid_dir, find_covid), (kermany_dir, find_kermany)):
        if folder is not None:
            found, sk, ex = finder(folder)
            if not found:
                raise DataError(f"{folder}: no usable images found ({dict(sk) or 'no matching rows/files'})")
            candidates.extend(found)
            skipped.update(sk)
            for k, v in ex.items():
                examples[k].extend(v)

    rows = _dedupe(candidates, skipped, examples, progress)
    groups = _merge_groups(rows)
    splits = assign_splits(
        [c.label for c, _, _ in rows], [groups[c.patient_id] for c, _, _ in rows], seed=seed, fractions=fractions
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    out_root = out_dir.resolve()
    taken: set[str] = set()
    lines = []
    for (cand, sha, _), split in tqdm(
        list(zip(rows, splits, strict=True)), desc="copying" if copy else "writing", unit="img",
        disable=None if progress and copy else True, leave=False,
    ):
        if copy:
            rel = _copy_name(cand, taken)
            dest = out_root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cand.path, dest)
        else:
            rel = Path(os.path.relpath(cand.path.resolve(), out_root)).as_posix()
        lines.append(
            {
                "relative_path": rel,
                "label": cand.label,
                "split": split,
                "patient_id": cand.patient_id,
                "patient_group": groups[cand.patient_id],
                "source": cand.source,
                "sha256": sha,
                "source_path": cand.source_path,
                "license": cand.license,
                "view": cand.view,
                "finding": cand.finding,
            }
        )
    lines.sort(key=lambda r: (CLASSES_4.index(r["label"]), r["relative_path"]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    atomic_write_text(manifest, buf.getvalue())

    counts: dict[str, dict[str, int]] = {c: dict.fromkeys(SPLITS, 0) for c in CLASSES_4}
    for r in lines:
        counts[r["label"]][r["split"]] += 1
    return PrepareResult(manifest, len(lines), counts, dict(skipped), {k: v[:3] for k, v in examples.items()})


def _find_dir(root: Path, test: Callable[[Path], bool], layout: str, needs: str) -> Path:
    """`root` itself, or its only subfolder (an extracted zip), when it passes `test`."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if test(root):
        return root
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__MACOSX"))]
    hits = [d for d in subdirs if test(d)]
    if len(hits) == 1:
        return hits[0]
    raise DataError(f"{root}: not a {layout} folder (expected {needs})")


def _skip(skipped: Counter[str], examples: dict[str, list[str]], reason: str, example: str) -> None:
    skipped[reason] += 1
    if len(examples[reason]) < 3:
        examples[reason].append(example)


def _dedupe(
    candidates: Iterable[Candidate], skipped: Counter[str], examples: dict[str, list[str]], progress: bool
) -> list[tuple[Candidate, str, list[str]]]:
    """Hash every file and keep one row per content: (first candidate, sha256, ids sharing it).

    Identical files under different labels are dropped (which label is right is unknowable).
    """
    by_sha: dict[str, list[Candidate]] = defaultdict(list)
    candidates = list(candidates)
    for cand in tqdm(candidates, desc="hashing", unit="img", disable=None if progress else True, leave=False):
        by_sha[sha256_file(cand.path)].append(cand)
    rows = []
    for sha, cands in by_sha.items():  # insertion order: the order the files were found
        if len({c.label for c in cands}) > 1:
            _skip(skipped, examples, "same file under two labels (dropped)", str(cands[0].path))
            continue
        for extra in cands[1:]:
            _skip(skipped, examples, "duplicate file (same sha256, listed once)", str(extra.path))
        rows.append((cands[0], sha, sorted({c.patient_id for c in cands})))
    return rows


def _merge_groups(rows: list[tuple[Candidate, str, list[str]]]) -> dict[str, str]:
    """patient_id -> patient_group: ids sharing a file are merged (union-find), named by the smallest id."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, _, ids in rows:
        for other in ids:
            a, b = find(ids[0]), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {pid: find(pid) for pid in list(parent)}


def _copy_name(cand: Candidate, taken: set[str]) -> str:
    prefix = "ieee" if cand.source == COVID_SOURCE else "kermany"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", cand.path.stem)
    suffix = cand.path.suffix.lower()
    rel = f"images/{cand.label}/{prefix}_{stem}{suffix}"
    n = 2
    while rel.lower() in taken:
        rel = f"images/{cand.label}/{prefix}_{stem}_{n}{suffix}"
        n += 1
    taken.add(rel.lower())
    return rel
