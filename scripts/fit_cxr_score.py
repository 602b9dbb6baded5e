"""Fit the CXR score (runtime/cxr_score.py) and write edgecxr/reference/cxr_score/cxr_score.json.

    .venv/bin/python scripts/fit_cxr_score.py --data ../shared/data/cxr/manifest-extended.csv

Statistics from `train`, choices on `val` and the FIT half of the large OOD set; never reads `test`
(edgecxr.stages.cxr_score.fit says what is fitted where). scripts/ood_report.py reports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="manifest (train and val splits)")
    ap.add_argument("--out", type=Path, default=REPO / "edgecxr" / "reference" / "cxr_score")
    ap.add_argument("--per-kind", type=int, default=200)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"error: no manifest {args.data}", file=sys.stderr)
        return 2
    from edgecxr.stages.cxr_score.fit import run

    meta = run(args.data, args.out, args.per_kind)
    p = meta["params"]
    print(f"shrinkage {p['shrinkage']}, threshold {p['threshold']:.3f}, val uprights pass {meta['val_upright_pass']:.1%}")
    for kind, row in meta["fit_half"].items():
        print(f"  FIT {kind:9s} n {row['n']:4d}  caught {row['caught']:7.2%}  AUROC {row['auroc']:.4f}")
    print(f"wrote {args.out / 'cxr_score.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
