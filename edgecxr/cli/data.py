"""`edgecxr data check` and `edgecxr data prepare`: thin wrappers over edgecxr.data.check / .prepare."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecxr.cli.output import check_output, printable
from edgecxr.core.errors import DataError
from edgecxr.data.check import TOTAL, CheckReport, check_manifest
from edgecxr.data.manifest import SPLITS, outside_reason
from edgecxr.data.prepare import DEFAULT_SEED, parse_fractions, prepare_dataset

#: Problems listed in the text report; --json lists all.
MAX_LISTED = 50


@click.group("data")
def data() -> None:
    """Check a dataset manifest or prepare one from the public source layouts.

    \b
    Examples:
      edgecxr data check ../shared/data/cxr/manifest.csv
      edgecxr data prepare --covid covid-chestxray-dataset --kermany chest_xray --out data/cxr
    """


@data.command("check")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report instead of tables.")
@click.option("--no-hash", is_flag=True, help="Skip recomputing each file's sha256 (faster; still checks files exist).")
@click.option("--decode", is_flag=True, help="Also decode every image to find corrupt files (slow).")
@click.option("--allow-outside", is_flag=True,
              help="Accept rows outside the manifest's folder (absolute paths, '..'), e.g. from `data prepare --link`.")
def check(manifest: str, as_json: bool, no_hash: bool, decode: bool, allow_outside: bool) -> None:
    """Verify MANIFEST: files, sha256, labels, splits and patient leakage between splits.

    \b
    Rows whose relative_path is absolute or climbs out with '..' are problems (their files are
    not read) unless --allow-outside. Exit code 0 when no problem is found, 1 otherwise.
    Example:  edgecxr data check ../shared/data/cxr/manifest.csv --decode
    """
    report = check_manifest(manifest, verify_hash=not no_hash, decode=decode, progress=not as_json,
                            allow_outside=allow_outside)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(format_check_report(report))
    if not report.ok:
        raise click.exceptions.Exit(1)


@data.command("prepare")
@click.option("--covid", "covid_dir", type=click.Path(file_okay=False, path_type=str),
              help="covid-chestxray-dataset folder (metadata.csv + images/).")
@click.option("--kermany", "kermany_dir", type=click.Path(file_okay=False, path_type=str),
              help="Kaggle chest_xray folder (*/NORMAL, */PNEUMONIA).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder for manifest.csv (and images/ with --copy).")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Split seed.")
@click.option("--fractions", default="0.7,0.1,0.1,0.1", show_default=True,
              help="train,val,calib,test fractions of each class's images.")
@click.option("--copy/--link", "copy", default=False, show_default=True,
              help="Copy images under OUT/images/, or reference them in place (relative paths from OUT).")
@click.option("--force", "overwrite", is_flag=True, help="Replace an existing OUT/manifest.csv.")
def prepare(covid_dir: str | None, kermany_dir: str | None, out_dir: str, seed: int, fractions: str,
            copy: bool, overwrite: bool) -> None:
    """Build a manifest with a patient-level, class-stratified split from the public downloads.

    \b
    Example:  edgecxr data prepare --covid covid-chestxray-dataset --kermany chest_xray --out data/cxr
    Images are not resized. Check the result with `edgecxr data check OUT/manifest.csv`.
    """
    try:
        fracs = parse_fractions(fractions)
    except DataError as exc:
        raise click.BadParameter(str(exc), param_hint="--fractions") from None
    check_output(Path(out_dir) / "manifest.csv", "--out")  # never through a link, onto an image or a bundle file
    result = prepare_dataset(
        out_dir, covid_dir=covid_dir, kermany_dir=kermany_dir, seed=seed, fractions=fracs, copy=copy, overwrite=overwrite
    )
    click.echo(f"wrote {result.manifest} ({result.n_images} images, seed {seed})")
    counts = {label: {**row, TOTAL: sum(row.values())} for label, row in result.counts.items()}
    counts[TOTAL] = {col: sum(row[col] for row in counts.values()) for col in [*SPLITS, TOTAL]}
    click.echo(format_table("images", counts, list(counts), [*SPLITS, TOTAL]))
    for reason, n in sorted(result.skipped.items()):
        shown = ", ".join(result.skipped_examples.get(reason, []))
        click.echo(f"skipped {n}: {reason}" + (f" (e.g. {shown})" if shown else ""))
    if not copy and _has_outside_rows(Path(result.manifest)):
        click.echo("note: the images are referenced in place, outside the manifest's folder: pass --allow-outside "
                   "to `data check`, train, evaluate, export, calibrate, verify and build with this manifest", err=True)


def _has_outside_rows(manifest: Path) -> bool:
    import csv

    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        return any(outside_reason(row.get("relative_path") or "") for row in csv.DictReader(fh))


def format_table(title: str, table: dict[str, dict[str, int]], rows: list[str], cols: list[str]) -> str:
    """Right-aligned text table: first column the row names, header `title` + column names."""
    first = max(len(title), *(len(r) for r in rows))
    widths = [max(len(c), *(len(str(table[r].get(c, 0))) for r in rows)) for c in cols]
    lines = [f"{title:<{first}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))]
    for r in rows:
        lines.append(f"{r:<{first}}  " + "  ".join(f"{table[r].get(c, 0):>{w}}" for c, w in zip(cols, widths, strict=True)))
    return "\n".join(lines)


def format_check_report(report: CheckReport) -> str:
    """The human-readable `data check` output: tables, what was checked, then the problems."""
    cols = [*report.splits, TOTAL]
    rows = [label for label in report.labels if report.images[label][TOTAL]] + [TOTAL]
    out = [
        f"manifest: {report.manifest} ({report.n_images} images, "
        f"{report.patients[TOTAL][TOTAL]} patients, {report.n_patient_groups} patient groups)",
        "",
        format_table("images", report.images, rows, cols),
        "",
        format_table("patients", report.patients, rows, cols),
        "",
    ]
    checked = ["files exist", "labels", "splits", "patient leakage"]
    if report.hashed:
        checked.append(f"sha256 of {report.hashed} files")
        if report.without_sha256:
            checked.append(f"({report.without_sha256} rows have no sha256 to compare)")
    else:
        checked.append("sha256 not verified (--no-hash)")
    if report.decoded or any(p.kind == "decode" for p in report.problems):
        checked.append(f"decoded {report.decoded} images")
    out.append("checked: " + ", ".join(checked))
    if report.ok and report.warnings:  # e.g. no COVID image in `test`: the COVID gate cannot run on it
        out.append(f"OK: no problems found, {len(report.warnings)} warning(s)")
        out.extend(printable(f"  [warning] {w}") for w in report.warnings)
        return "\n".join(out)
    if report.ok:
        out.append("OK: no problems found")
        return "\n".join(out)
    counts = ", ".join(f"{n} {kind}" for kind, n in report.problem_counts().items())
    out.append(f"FAILED: {len(report.problems)} problem(s) ({counts})")
    for p in report.problems[:MAX_LISTED]:
        where = f"line {p.line}: " if p.line else ""
        subject = f"{p.path}: " if p.path and p.path not in p.message else ""
        out.append(printable(f"  [{p.kind}] {where}{subject}{p.message}"))  # a path with a newline stays one line
    if len(report.problems) > MAX_LISTED:
        out.append(f"  ... and {len(report.problems) - MAX_LISTED} more (use --json for the full list)")
    out.extend(printable(f"  [warning] {w}") for w in report.warnings)
    return "\n".join(out)
