"""What each input check catches on the large OOD set (stages/confidence/ood_large), per kind and half.

    .venv/bin/python scripts/ood_report.py --data ../shared/data/cxr/manifest-extended.csv
    .venv/bin/python scripts/ood_report.py --data ../shared/data/cxr/manifest-extended.csv \\
        --models coronet cnn-lstm --update-docs

Per kind, for the FIT half (what thresholds and choices may look at; `val` films for the film
transforms) and the REPORT half (`test` films; never fitted on): n, and the share caught by the
pixel rules (`InputRules.check_pixels`), by the orientation gate, by the CXR score
(runtime/cxr_score.py, on the picture as given), and by all of them in the product's order
(`inputs.gate_and_check`, "reject"); the AUROC of the CXR score against the upright films of
the same split. Upright `val` / `test` films are rows too: what is refused there is the price.
Items are decoded arrays, so the DICOM header rules (which refuse every pydicom CT/MR/US file by its
Modality or SOP class) are not counted: the `dicom` row is what the pixels alone give.

With --models, for the REPORT half and the `test` uprights: each model's whole `infer` path
(FP16 ONNX via `edgecxr.Classifier`): rejected by the checks, abstained (the model's own OOD score),
or answered; and the AUROC of the model's own OOD score per kind, for comparison. The model is
run once with the checks off (so every item has its OOD score); "rejected" is the checks' verdict
above, which runs before the model and leaves its input alone, so the result is the same as
running `infer` with the checks on.

Nothing is fitted here (scripts/fit_cxr_score.py fits the score on train, val and the FIT half).
Writes ood-report.json into --out (default runs/ood/); --update-docs writes docs/results/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from edgecxr.core.fileutil import recorded_path

REPO = Path(__file__).resolve().parents[1]


def items_of(records: list, half: str, per_kind: int) -> list:
    """Upright films of the half's split, then every kind of the half."""
    from edgecxr.data.io import load_image
    from edgecxr.data.manifest import select
    from edgecxr.stages.confidence import ood_large
    from edgecxr.stages.confidence.ood_set import OodItem

    split = ood_large.FILM_SPLIT[half]
    recs = select(records, split)
    films = [OodItem("upright", f"{split}-{Path(r.path).stem}", load_image(r.path), source=Path(r.path).stem) for r in recs]
    return films + ood_large.build(half, per_kind) + list(ood_large.film_transforms(recs, half))


def checks(items: list) -> dict[str, np.ndarray]:
    """Per item: pixel rules, gate (not upright), CXR score value, and the product's verdict."""
    from edgecxr.runtime.cxr_score import shipped_score
    from edgecxr.runtime.input_checks import DEFAULT_RULES
    from edgecxr.runtime.orientation import shipped_gate

    gate, score = shipped_gate(), shipped_score()
    pixel, turned, value = [], [], []
    for it in items:
        pixel.append(DEFAULT_RULES.check_pixels(it.image) is not None)
        verdict = gate.check(it.image)
        turned.append(not verdict.upright)
        value.append(score.score(verdict.logits))
    pixel_a, turned_a, value_a = np.array(pixel), np.array(turned), np.array(value)
    cxr = value_a > score.threshold
    return {"pixel": pixel_a, "gate": turned_a, "score": value_a, "cxr": cxr, "all": pixel_a | turned_a | cxr}


def table(items: list, c: dict[str, np.ndarray]) -> dict[str, dict]:
    from edgecxr.stages.cxr_score.fit import auroc

    kinds = list(dict.fromkeys(it.kind for it in items))
    kind = np.array([it.kind for it in items])
    up = c["score"][kind == "upright"]
    out = {}
    for k in kinds:
        m = kind == k
        row = {"n": int(m.sum()), "sources": len({it.source for it, keep in zip(items, m, strict=True) if keep})}
        for layer in ("pixel", "gate", "cxr", "all"):
            row[f"caught_{layer}"] = round(float(c[layer][m].mean()), 4)
        if k != "upright":
            row["auroc_cxr"] = round(auroc(c["score"][m], up), 5)
        out[k] = row
    return out


def model_rows(model: str, items: list, c: dict[str, np.ndarray]) -> dict:
    """The model's infer path per kind (rejected by the checks / abstained / answered) and its own OOD AUROC."""
    from edgecxr.runtime.classifier import Classifier
    from edgecxr.stages.cxr_score.fit import auroc

    with Classifier.load(model, precision="fp16", input_rules=None) as clf:
        runtime = {k: clf.backend_info.get(k) for k in ("backend", "precision", "artifact")}
        runtime["artifact"] = recorded_path(runtime["artifact"]) if runtime["artifact"] else None  # no machine paths in docs/results
        threshold = clf.audit.get("ood_threshold")
        preds = clf.predict([it.image for it in items], batch_size=16)
    kind = np.array([it.kind for it in items])
    ood = np.array([np.nan if p.ood_score is None else p.ood_score for p in preds], dtype=np.float64)
    abstained = np.array([p.status == "abstained" for p in preds])
    failed = np.array([p.error is not None for p in preds])
    out: dict = {"runtime": runtime, "ood_threshold": threshold}
    up = ood[kind == "upright"]
    for k in dict.fromkeys(kind.tolist()):
        m = kind == k
        rej = c["all"][m]
        row = {"n": int(m.sum()), "rejected": int(rej.sum()), "abstained": int((abstained[m] & ~rej).sum()),
               "failed": int((failed[m] & ~rej).sum())}
        row["answered"] = row["n"] - row["rejected"] - row["abstained"] - row["failed"]
        row["caught"] = round(1 - row["answered"] / row["n"], 4)
        if k != "upright" and np.isfinite(up).all():
            row["auroc_own_ood"] = round(auroc(ood[m], up), 5)
        out[k] = row
    return out


def latency(films: list[np.ndarray], repeats: int = 3) -> dict:
    from edgecxr.runtime.cxr_score import timed

    for img in films[:10]:
        timed(img)
    gate_ms, score_ms = [], []
    for _ in range(repeats):
        for img in films:
            g, s = timed(img)
            gate_ms.append(g)
            score_ms.append(s)
    q = lambda a, p: round(float(np.percentile(a, p)), 4)  # noqa: E731
    return {"films": len(films), "repeats": repeats,
            "gate_with_logits_ms": {"median": q(gate_ms, 50), "p90": q(gate_ms, 90)},
            "cxr_distance_ms": {"median": q(score_ms, 50), "p90": q(score_ms, 90), "max": q(score_ms, 100)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--per-kind", type=int, default=200)
    ap.add_argument("--models", nargs="*", default=[], help="also run each model's infer path (FP16) on the REPORT half")
    ap.add_argument("--out", type=Path, default=Path("runs/ood"))
    ap.add_argument("--update-docs", action="store_true", help="write docs/results/ood-report.json instead")
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"error: no manifest {args.data}", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")  # pydicom's warnings about its own malformed test files
    from edgecxr.data.manifest import read_manifest
    from edgecxr.runtime.cxr_score import shipped_score

    records = read_manifest(args.data)
    score = shipped_score()
    out: dict = {"date": _dt.date.today().isoformat(), "command": f"scripts/ood_report.py --data {args.data.name}"
                 + (f" --models {' '.join(args.models)}" if args.models else ""),
                 "cpu": platform.processor() or platform.machine(),
                 "cxr_score": {"params_sha256": score.meta["params_sha256"], "threshold": score.threshold,
                               "gate_sha256": score.gate_sha256}}
    for half in ("fit", "report"):
        t0 = time.perf_counter()
        items = items_of(records, half, args.per_kind)
        built = time.perf_counter() - t0
        c = checks(items)
        out[half] = {"built_s": round(built, 1), "kinds": table(items, c)}
        print(f"\n{half.upper()} half ({len(items)} items, built in {built:.0f} s): kind, n, sources, caught by pixel "
              "rules / gate / CXR score / all, AUROC of the CXR score")
        for k, r in out[half]["kinds"].items():
            print(f"  {k:9s} {r['n']:4d} {r['sources']:4d}  {r['caught_pixel']:7.1%} {r['caught_gate']:7.1%} "
                  f"{r['caught_cxr']:7.1%} {r['caught_all']:7.1%}  {r.get('auroc_cxr', float('nan')):.4f}")
        if half == "report":
            for model in args.models:
                out[half][model] = rows = model_rows(model, items, c)
                print(f"  {model} ({rows['runtime']['precision']}): " + ", ".join(
                    f"{k} {v['caught']:.1%}" + (f" (own OOD AUROC {v['auroc_own_ood']:.3f})" if "auroc_own_ood" in v else "")
                    for k, v in rows.items() if isinstance(v, dict) and "caught" in v))
            out["latency"] = latency([it.image for it in items if it.kind == "upright"])
            print(f"\nCXR score cost per film: {out['latency']}")
    folder = REPO / "docs" / "results" if args.update_docs else args.out
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ood-report.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {folder / 'ood-report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
