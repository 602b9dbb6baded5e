"""What the orientation gate catches: every `val` and `test` film turned, flipped and inverted.

    .venv/bin/python scripts/orientation_report.py --data ../shared/data/cxr/manifest-extended.csv
    .venv/bin/python scripts/orientation_report.py --data ../shared/data/cxr/manifest-extended.csv \\
        --models coronet cnn-lstm --update-docs

Per kind (upright, rot90, rot180, rot270, flip, negative; stages/confidence/ood_set.transformed),
for each split: how many the pixel rules reject (`InputRules.check_pixels`), how many the gate
refuses, how many either does (the product's order: pixel rules, then the gate), and how often the
gate's reason names the kind (up to a left-right mirror: "turned 180 degrees" and "flipped
top-bottom" are the same picture mirrored). None of this depends on a classifier. With --models,
the whole product as `edgecxr infer` runs it (`Classifier.predict` on the decoded films): rejected,
abstained (the model's OOD score) or answered. Also the gate's latency on this CPU (one film at a
time: the gate's resize of a decoded film plus its ONNX Runtime run), and what the pixel rules and
the gate do with the section-2 OOD set (8 per kind of noise, text, photos, CT/MR/US/NM, made from
`val`), which the gate was not made for. Nothing is fitted here:
the gate's threshold was set on `val` when it was trained (scripts/train_orientation.py); `test`
numbers are the report.

Writes orientation-gate.json into --out (default runs/orientation/); --update-docs writes
docs/results/orientation-gate.json, which docs/SAFETY.md quotes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgecxr.data.manifest import read_manifest, select
from edgecxr.runtime.input_checks import DEFAULT_RULES
from edgecxr.runtime.orientation import BY_NAME, shipped_gate, timed_check
from edgecxr.stages.confidence.ood_set import TRANSFORM_KINDS, transformed

REPO = Path(__file__).resolve().parents[1]
KINDS = ("upright", *TRANSFORM_KINDS)


def gate_rows(records: list, split: str) -> tuple[dict, list]:
    """Per kind: n, pixel rules, gate, either, reason right; and the decoded items (for --models)."""
    gate = shipped_gate()
    tally: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    items = []
    for item in transformed(records, split):
        items.append(item)
        row = tally[item.kind]
        pixel = DEFAULT_RULES.check_pixels(item.image) is not None
        verdict = gate.check(item.image)
        row["n"] += 1
        row["pixel_rules"] += pixel
        row["gate"] += not verdict.upright
        row["either"] += pixel or not verdict.upright
        if item.kind != "upright" and not verdict.upright:
            want = BY_NAME[TRANSFORM_KINDS[item.kind]]
            row["named"] += verdict.transform == want
            row["named_up_to_mirror"] += verdict.transform in (want, want.mirrored)
    return {k: _rates(dict(tally[k])) for k in KINDS}, items


def _rates(row: dict[str, int]) -> dict[str, float | int]:
    n = row["n"]
    out: dict[str, float | int] = {"n": n}
    for key in ("pixel_rules", "gate", "either"):
        out[key] = round(row.get(key, 0) / n, 4)
    if row.get("gate"):
        out["gate_reason_named"] = round(row.get("named", 0) / row["gate"], 4)
        out["gate_reason_named_up_to_mirror"] = round(row.get("named_up_to_mirror", 0) / row["gate"], 4)
    return out


def product_rows(model: str, items: list) -> dict:
    """What `Classifier.predict` answers per kind: rejected (and by the gate), abstained, answered."""
    from edgecxr.runtime.classifier import Classifier

    tally: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with Classifier.load(model) as clf:
        runtime = {k: clf.backend_info.get(k) for k in ("backend", "precision")}
        preds = clf.predict([it.image for it in items], batch_size=16)
    for it, p in zip(items, preds, strict=True):
        row = tally[it.kind]
        row["n"] += 1
        status = "failed" if p.error else p.status
        row[status] += 1
        if status == "rejected" and "orientation gate" in (p.reason or ""):
            row["rejected_by_gate"] += 1
    out = {"runtime": runtime}
    for k in KINDS:
        row = tally[k]
        out[k] = {"n": row["n"], **{s: row.get(s, 0) for s in ("rejected", "rejected_by_gate", "abstained", "ok", "failed")}}
        out[k]["not_answered"] = round((row["n"] - row.get("ok", 0)) / row["n"], 4)
    return out


def builtin_ood_rows(val_records: list) -> dict:
    """The section-2 OOD set (stages/confidence/ood_set.from_records: 8 per kind, made from `val`): what the
    pixel rules and the gate do with pictures that are not chest films at all (the gate was not made for them)."""
    from edgecxr.stages.confidence import ood_set

    gate = shipped_gate()
    tally: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item in ood_set.from_records(val_records):
        row = tally[item.kind]
        pixel = DEFAULT_RULES.check_pixels(item.image) is not None
        upright = gate.check(item.image).upright
        row["n"] += 1
        row["pixel_rules"] += pixel
        row["gate"] += not upright
        row["either"] += pixel or not upright
    return {k: dict(v) for k, v in tally.items()}


def latency(films: list[np.ndarray], repeats: int = 3) -> dict:
    """ms per film, one at a time: the gate's own resize of the decoded film plus its ONNX run."""
    gate = shipped_gate()
    for img in films[:10]:
        gate.check(img)  # warm-up
    total, run_only = [], []
    for _ in range(repeats):
        for img in films:
            resize, run = timed_check(gate, img)
            total.append(resize + run)
            run_only.append(run)
    q = lambda a, p: round(float(np.percentile(a, p)), 4)  # noqa: E731
    return {"films": len(films), "repeats": repeats, "total_ms": {"median": q(total, 50), "p90": q(total, 90), "p99": q(total, 99)},
            "onnx_run_ms": {"median": q(run_only, 50), "p90": q(run_only, 90)},
            "film_px": f"{films[0].shape[1]}x{films[0].shape[0]} (first film)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--models", nargs="*", default=[], help="also run the whole product with these models")
    ap.add_argument("--out", type=Path, default=Path("runs/orientation"))
    ap.add_argument("--update-docs", action="store_true", help="write docs/results/orientation-gate.json instead")
    args = ap.parse_args()

    gate = shipped_gate()
    records = read_manifest(args.data)
    out: dict = {"date": _dt.date.today().isoformat(), "command": "scripts/orientation_report.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in
        (("data", args.data.name), ("models", args.models)) if v),
        "gate": {"sha256": gate.meta["sha256"], "threshold": gate.threshold, "mirror_invariant": gate.mirror_invariant,
                 "input_size": gate.size}, "cpu": platform.processor() or platform.machine()}
    for split in args.splits:
        recs = select(records, split)
        rows, items = gate_rows(recs, split)
        out[split] = {"films": len(recs), "gate_and_pixel_rules": rows}
        for model in args.models:
            out[split][model] = product_rows(model, items)
        if split == args.splits[-1]:
            out["latency"] = latency([it.image for it in items if it.kind == "upright"])
        print(f"\n{split} ({len(recs)} films): kind, n, pixel rules, gate, either, gate names it (up to a mirror)")
        for k, r in rows.items():
            print(f"  {k:9s} {r['n']:4d}  {r['pixel_rules']:6.1%}  {r['gate']:6.1%}  {r['either']:6.1%}  "
                  f"{r.get('gate_reason_named_up_to_mirror', float('nan')):6.1%}")
        for model in args.models:
            print(f"  {model}: " + ", ".join(f"{k} {v['not_answered']:.1%} not answered" for k, v in out[split][model].items()
                                             if k != "runtime"))
    out["builtin_ood"] = builtin_ood_rows(select(records, "val"))
    print("\nbuilt-in OOD set (8 per kind): kind, n, pixel rules, gate, either")
    for k, r in out["builtin_ood"].items():
        print(f"  {k:9s} {r['n']:4d} {r['pixel_rules']:4d} {r['gate']:4d} {r['either']:4d}")
    print(f"\ngate latency: {out['latency']['total_ms']}")
    folder = REPO / "docs" / "results" if args.update_docs else args.out
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orientation-gate.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {folder / 'orientation-gate.json'}")


if __name__ == "__main__":
    main()
