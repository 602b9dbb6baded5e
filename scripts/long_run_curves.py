#!/usr/bin/env python3
"""The long training runs' curves and hours, from each run's train.jsonl (issue 23's report).

    python scripts/long_run_curves.py                   # table on stdout, curves into runs/long-runs/
    python scripts/long_run_curves.py --update-docs     # docs/results/long-runs.{json,png} + the table
                                                        # in docs/REPRODUCTION.md, between its markers

Why: the long runs live outside the checkout (`$EDGECXR_RUNS`, default ~/.cache/edgecxr/runs) and
take days across sessions; what REPRODUCTION.md says of them must come from their own logs, not
from a hand-copied line. Each epoch record of `edgecxr train` carries the EMA-weight validation
metrics (`val_accuracy`, `val_loss`: what model selection uses), the raw weights' (`raw_val_*`),
seconds and images/s. Only `val` is read by training: nothing here touches `test`.

A run recorded in the committed JSON whose folder is gone stays in the report, marked `folder_gone`:
the runs live on the build machine, and a machine is not always kept from one session to the next
(on 2026-12-07 one was not, and 15 hours of two runs went with it); their record must not go too.

The committed JSON names runs, not machine paths. Epoch seconds include whatever else the machine
ran at the time (they are wall clock, the runs `nice`d under tests and benchmarks), so the table
shows the median images/s beside the total hours.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "REPRODUCTION.md"
BEGIN, END = "<!-- long-runs:begin -->", "<!-- long-runs:end -->"
FIELDS = ("epoch", "of", "val_accuracy", "raw_val_accuracy", "val_loss", "raw_val_loss", "loss", "seconds",
          "images_per_second", "lr_at_start", "time")


def read_run(folder: Path) -> dict[str, Any] | None:
    """One run's epochs (the last record of each epoch wins: a resumed run may log one twice)."""
    log = folder / "train.jsonl"
    if not log.is_file():
        return None
    epochs: dict[int, dict[str, Any]] = {}
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
            epochs[rec["epoch"]] = {k: rec[k] for k in FIELDS if k in rec}
    if not epochs:
        return None
    rows = [epochs[e] for e in sorted(epochs)]
    best = max(rows, key=lambda r: (r.get("val_accuracy", 0.0), -r["epoch"]))
    best_raw = max(rows, key=lambda r: (r.get("raw_val_accuracy", 0.0), -r["epoch"]))
    speeds = [r["images_per_second"] for r in rows if r.get("images_per_second")]
    return {
        "run": folder.name,
        "finished": (folder / "bundle.json").is_file(),
        "epochs_done": rows[-1]["epoch"],
        "epochs_planned": rows[-1].get("of"),
        "hours": round(sum(r.get("seconds", 0.0) for r in rows) / 3600, 2),
        "median_images_per_second": round(statistics.median(speeds), 3) if speeds else None,
        "best_val_accuracy": best.get("val_accuracy"),
        "best_val_epoch": best["epoch"],
        "best_raw_val_accuracy": best_raw.get("raw_val_accuracy"),
        "best_raw_val_epoch": best_raw["epoch"],
        "last_time": rows[-1].get("time"),
        "epochs": rows,
    }


def collect(runs: Path) -> list[dict[str, Any]]:
    found = [read_run(d) for d in sorted(runs.iterdir()) if d.is_dir()] if runs.is_dir() else []
    return [r for r in found if r]


def keep_recorded(runs: list[dict[str, Any]], recorded: Path) -> list[dict[str, Any]]:
    """`runs` plus every run of the committed report at `recorded` that has no folder here any more."""
    try:
        earlier = json.loads(recorded.read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return runs
    here = {r["run"] for r in runs}
    gone = [dict(r, folder_gone=True) for r in earlier if isinstance(r, dict) and r.get("run") not in here]
    return sorted(runs + gone, key=lambda r: r["run"])


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| run | epochs done | hours | median img/s | last val acc EMA / raw | best val acc EMA (epoch) "
             "| best raw (epoch) |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        last = r["epochs"][-1]
        done = f"{r['epochs_done']} of {r['epochs_planned']}" + (
            " (finished)" if r["finished"] else " (stopped: its folder was lost)" if r.get("folder_gone") else "")
        lines.append(f"| {r['run']} | {done} | {r['hours']:.1f} | {r['median_images_per_second'] or '-'} "
                     f"| {pct(last.get('val_accuracy'))} / {pct(last.get('raw_val_accuracy'))} "
                     f"| {pct(r['best_val_accuracy'])} ({r['best_val_epoch']}) "
                     f"| {pct(r['best_raw_val_accuracy'])} ({r['best_raw_val_epoch']}) |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(runs):
        color = f"C{i}"
        ep = [e["epoch"] for e in r["epochs"]]
        acc.plot(ep, [e.get("val_accuracy") for e in r["epochs"]], "-o", ms=3, color=color, label=f"{r['run']} EMA")
        acc.plot(ep, [e.get("raw_val_accuracy") for e in r["epochs"]], "--", color=color, alpha=0.6,
                 label=f"{r['run']} raw")
        loss.plot(ep, [e.get("val_loss") for e in r["epochs"]], "-o", ms=3, color=color, label=f"{r['run']} EMA")
        loss.plot(ep, [e.get("raw_val_loss") for e in r["epochs"]], "--", color=color, alpha=0.6)
    acc.set(xlabel="epoch", ylabel="val accuracy", title="val accuracy (129 images)")
    loss.set(xlabel="epoch", ylabel="val loss", title="val loss")
    acc.grid(alpha=0.3)
    loss.grid(alpha=0.3)
    acc.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def update_doc(doc: Path, text: str) -> None:
    """Replace what stands between the markers; refuse (exit 2) when they are missing."""
    body = doc.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(body):
        sys.exit(f"long_run_curves: no {BEGIN} ... {END} in {doc}")
    doc.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", body, count=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path,
                    default=Path(os.environ.get("EDGECXR_RUNS", Path.home() / ".cache" / "edgecxr" / "runs")),
                    help="the folder holding one folder per run (default $EDGECXR_RUNS or ~/.cache/edgecxr/runs)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "long-runs", help="where the JSON and PNG go")
    ap.add_argument("--update-docs", action="store_true",
                    help="write docs/results/long-runs.{json,png} and the table in docs/REPRODUCTION.md")
    ap.add_argument("--doc", type=Path, default=DOC, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    runs = collect(args.runs)
    if args.update_docs:
        runs = keep_recorded(runs, args.doc.parent / "results" / "long-runs.json")
    if not runs:
        print(f"long_run_curves: no run with a train.jsonl under {args.runs}", file=sys.stderr)
        return 2
    out = args.doc.parent / "results" if args.update_docs else args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "long-runs.json").write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    plot(runs, out / "long-runs.png")
    text = table(runs)
    print(text)
    if args.update_docs:
        stamp = max(r["last_time"] or "" for r in runs)
        update_doc(args.doc, f"As of {stamp} (`.venv/bin/python scripts/long_run_curves.py --update-docs`; curves in "
                             f"`docs/results/long-runs.png`, every epoch in `docs/results/long-runs.json`):\n\n"
                             + text + "\n\n![val accuracy and loss per epoch](results/long-runs.png)")
    print(f"wrote {out / 'long-runs.json'} and {out / 'long-runs.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
