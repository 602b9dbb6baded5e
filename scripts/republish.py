"""Republish a finished long training run as the shipped reference model, if it beats it on `val`.

    python scripts/republish.py coronet ~/.cache/edgecxr/runs/coronet-e40-ema --dry-run
    python scripts/republish.py coronet ~/.cache/edgecxr/runs/coronet-e40-ema
    python scripts/republish.py cnn-lstm ~/.cache/edgecxr/runs/cnn-lstm-224-e6-ema99 \\
        --init-from ~/.cache/edgecxr/runs/cnn-lstm-128-e16-ema99   # a progressive run names its first phase

First, before anything reads `test`, the val decision: the run's `metrics.val` (written by
`edgecxr train`; else `evaluations.val` of `edgecxr evaluate --split val`, run here if neither
exists) against the shipped bundle's `metrics.val`. It republishes only if val accuracy is higher
and COVID sensitivity (covid_vs_rest) is not lower; otherwise one line says why and the exit
status is 1 (`--force` goes on and records that it did). The decision is kept in RUN/republish.json
and, once the model is copied in, in its bundle.json ("republished").

Then the chain, each step an existing script or command, printed as `+ command` before it runs and
stopped at the first failure with that exit status (`--from STEP` resumes there):

  export       edgecxr export: ONNX FP32 + FP16 of the run, parity against Keras on `val`
  confidence   edgecxr confidence on the run: features output, calibrator on val + calib, OOD statistics
               on the train split of the manifest it was trained on, thresholds on val. Before the gate,
               because a gate verdict names the bytes it passed (sha256) and adding the features output
               later would leave the shipped FP16 "not verified"
  package      scripts/package_reference.py: `test` read once (Keras metrics, reference_probs.json), the
               FP16 gated on `test`, copied into edgecxr/reference/NAME (--init-from: progressive resizing)
  record       the val decision into the shipped bundle.json
  int8         scripts/quantize_reference.py --fallback auto --ship: INT8 re-calibrated (fully quantized
               where that passes on `val`), the method the shipped INT8 used unless --int8-method, chosen
               on `val`, gated once on `test`, copied in, confidence refitted with its INT8 threshold
  refit        only if the shipped confidence still names a file that is not shipped (no INT8 shipped):
               the confidence refitted in place on the FP16 model
  calibration  scripts/calibration_report.py --update-docs --write-bundles (both models)
  safety       scripts/safety_report.py NAME --update-docs
  ood          scripts/ood_report.py --models coronet cnn-lstm --update-docs (manifest-extended.csv)
  orientation  scripts/orientation_report.py --models coronet cnn-lstm --update-docs
  card         scripts/model_card.py NAME
  report       the numbers to paste by hand (README status, CHANGELOG, REPRODUCTION.md, SAFETY.md)

Nothing is chosen on `test`: it is read by the gates and the reports only. Not done here: the
commit, and the prose of README.md, CHANGELOG.md and docs/*.md (`report` prints what to change).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
INSTALLED = REPO / "edgecxr" / "reference"  #: the folder the scripts after `record` read and write
MODELS = ("coronet", "cnn-lstm")
DECISION = "republish.json"  #: in the run folder
EPS = 1e-9
STEPS = ("export", "confidence", "package", "record", "int8", "refit", "calibration", "safety", "ood",
         "orientation", "card", "report")
#: steps that can only work on edgecxr/reference (the scripts they call know no other folder)
INSTALLED_ONLY = ("int8", "calibration", "safety", "ood", "orientation")


@dataclass
class Step:
    name: str
    what: str
    argv: list[str] | None = None  #: a command, or None for work done in this process
    action: Callable[[], int] | None = None
    shown: str = ""  #: how an in-process step is printed

    def line(self) -> str:
        return "+ " + (show(self.argv) if self.argv is not None else self.shown)

    def header(self, number: int) -> str:
        """How the chain shows this step, run or dry: its name, place, what it does and its command."""
        return f"== {self.name} ({number}/{len(STEPS)}): {self.what}\n{self.line()}"


@dataclass
class Context:
    name: str
    run: Path
    data: Path
    train_data: Path
    ood_data: Path
    reference_dir: Path
    init_from: Path | None
    int8_method: str
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def shipped(self) -> Path:
        return self.reference_dir / self.name


def run_argv(argv: list[str]) -> int:
    """Run one step's command from the repository root; its exit status (tests replace this)."""
    return subprocess.run(argv, cwd=REPO).returncode


def show(argv: list[str]) -> str:
    """The command as a reader would paste it from the repository root."""
    def short(arg: str) -> str:
        if arg == sys.executable:
            venv = REPO / ".venv" / "bin" / "python"
            return ".venv/bin/python" if Path(arg) == venv else arg
        if arg.startswith("/"):
            try:
                return os.path.relpath(arg, REPO) if Path(arg).is_relative_to(REPO.parent) else arg
            except ValueError:
                return arg
        return arg
    return shlex.join(short(a) for a in argv)


def read_meta(folder: Path) -> dict[str, Any] | None:
    path = folder / "bundle.json"
    return json.loads(path.read_text()) if path.is_file() else None


# -- the val decision ---------------------------------------------------------------------------------
def val_row(meta: dict[str, Any]) -> dict[str, Any] | None:
    """accuracy and COVID sensitivity on `val`: training's metrics.val, else `evaluate --split val`'s summary."""
    m = (meta.get("metrics") or {}).get("val") or {}
    if m.get("accuracy") is not None:
        cv = m.get("covid_vs_rest") or {}
        sens = cv.get("sensitivity", ((m.get("per_class") or {}).get("covid") or {}).get("recall"))
        covid = (cv["tp"], cv["tp"] + cv["fn"]) if "tp" in cv and "fn" in cv else None
        return {"n": m.get("n"), "accuracy": m["accuracy"], "covid_sensitivity": sens, "covid": covid,
                "from": "metrics.val"}
    e = (meta.get("evaluations") or {}).get("val") or {}
    if e.get("accuracy") is not None:
        return {"n": e.get("n"), "accuracy": e["accuracy"], "covid_sensitivity": e.get("covid_sensitivity"),
                "covid": None, "from": "evaluations.val"}
    return None


def decide(candidate: dict[str, Any], shipped: dict[str, Any]) -> tuple[bool, str]:
    """Higher val accuracy and COVID sensitivity not lower, on the same val images."""
    if candidate["n"] != shipped["n"]:
        return False, f"not the same val split ({candidate['n']} images vs {shipped['n']} for the shipped model)"
    if candidate["covid_sensitivity"] is None or shipped["covid_sensitivity"] is None:
        return False, "no COVID sensitivity on val to compare"
    a, b = candidate["accuracy"], shipped["accuracy"]
    s, t = candidate["covid_sensitivity"], shipped["covid_sensitivity"]
    if a <= b + EPS:
        return False, f"val accuracy {a:.1%} is not higher than the shipped model's {b:.1%}"
    if s < t - EPS:
        return False, f"val COVID sensitivity {s:.1%} is lower than the shipped model's {t:.1%}"
    return True, f"val accuracy {b:.1%} -> {a:.1%}, COVID sensitivity {t:.1%} -> {s:.1%} (not lower)"


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    def cell(v: float | None, count: tuple[int, int] | None) -> str:
        return "n/a" if v is None else f"{v:.1%}" + (f" ({count[0]}/{count[1]})" if count else "")
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{'val':<{width}}{'accuracy':<20}COVID sensitivity"]
    for label, r in rows:
        acc = (round(r["accuracy"] * r["n"]), r["n"]) if r.get("n") else None
        lines.append(f"{label:<{width}}{cell(r['accuracy'], acc):<20}{cell(r['covid_sensitivity'], r['covid'])}"
                     f"   [{r['from']}]")
    return "\n".join(lines)


# -- the chain ----------------------------------------------------------------------------------------
def chain(ctx: Context) -> list[Step]:
    py, cli = sys.executable, [sys.executable, "-m", "edgecxr"]
    run, data, name = str(ctx.run), str(ctx.data), ctx.name
    package = [py, str(REPO / "scripts" / "package_reference.py"), run, "--name", name, "--data", data]
    if ctx.init_from is not None:
        package += ["--init-from", str(ctx.init_from)]
    card = [py, str(REPO / "scripts" / "model_card.py"), name]
    if ctx.reference_dir != INSTALLED:
        package += ["--reference-dir", str(ctx.reference_dir)]
        card = [py, card[1], "--dirs", str(ctx.reference_dir), str(REPO / "docs" / "models"), name]
    both = list(MODELS)
    return [
        Step("export", "ONNX FP32 + FP16, parity against Keras on val",
             [*cli, "export", "-m", run, "--data", data, "-q"]),
        Step("confidence", "calibrator (val + calib), OOD statistics (train) and thresholds (val), before the gate",
             [*cli, "confidence", "-m", run, "--data", data, "--train-data", str(ctx.train_data), "-q"]),
        Step("package", "test read once, FP16 gated on test, copied into " + show([str(ctx.shipped)]), package),
        Step("record", "the val decision into the shipped bundle.json", action=lambda: record(ctx),
             shown=f"record the val decision in {show([str(ctx.shipped / 'bundle.json')])} (\"republished\")"),
        Step("int8", "INT8 chosen on val by --fallback auto, gated once on test, shipped, confidence refitted",
             [py, str(REPO / "scripts" / "quantize_reference.py"), name, "--method", ctx.int8_method,
              "--fallback", "auto", "--ship", "--data", data]),
        Step("refit", "only if the shipped confidence names a file that is not shipped", action=lambda: refit(ctx),
             shown=f"refit the confidence of {show([str(ctx.shipped)])} in place, if it names an unshipped file"),
        Step("calibration", "calibrators compared, docs/results/calibration.json, reliability diagrams",
             [py, str(REPO / "scripts" / "calibration_report.py"), "--data", data, "--update-docs", "--write-bundles"]),
        Step("safety", f"docs/results/safety-{name}.json and its figures",
             [py, str(REPO / "scripts" / "safety_report.py"), name, "--data", data, "--update-docs"]),
        Step("ood", "the large OOD set through both models (docs/results/ood-report.json)",
             [py, str(REPO / "scripts" / "ood_report.py"), "--data", str(ctx.ood_data), "--models", *both,
              "--update-docs"]),
        Step("orientation", "turned/flipped/inverted films through both models (docs/results/orientation-gate.json)",
             [py, str(REPO / "scripts" / "orientation_report.py"), "--data", str(ctx.ood_data), "--models", *both,
              "--update-docs"]),
        Step("card", f"docs/models/{name}.md from the shipped bundle.json", card),
        Step("report", "the numbers to paste, and what is left by hand", action=lambda: report(ctx),
             shown="print the numbers to paste and what is left by hand"),
    ]


def record(ctx: Context) -> int:
    from edgecxr.core.bundle import Bundle

    bundle = Bundle.load(ctx.shipped)
    if (bundle.meta.get("copied_from") or {}).get("bundle") != ctx.run.name:
        print(f"error: {ctx.shipped} is not a copy of {ctx.run.name}; run the package step first", file=sys.stderr)
        return 1
    bundle.update(republished=ctx.decision)
    return 0


def refit(ctx: Context) -> int:
    """The confidence of a run is fitted on its FP32 file, which is not shipped; the INT8 step refits it on
    the shipped FP16. Where INT8 was not shipped, that refit is done here, in place, as the INT8 step does."""
    from edgecxr.core.bundle import Bundle

    meta = Bundle.load(ctx.shipped).meta
    conf = meta.get("confidence") or {}
    named = {(conf.get("calibrator") or {}).get("artifact"), ((conf.get("ood") or {}).get("statistics_from") or {}).get("artifact")}
    missing = sorted(k for k in named - {None} if k not in (meta.get("artifacts") or {}))
    if not missing:
        print("  not needed: the shipped confidence is fitted on a shipped file")
        return 0
    from edgecxr.runtime import store
    from edgecxr.stages.confidence.run import fit_confidence

    print(f"  refitting: the confidence names {', '.join(missing)}, which is not shipped", flush=True)
    fit_confidence(ctx.shipped, ctx.data, train_manifest=ctx.train_data, progress=False)
    store.record_hashes(Bundle.load(ctx.shipped))
    return 0


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def ci(pair: list[float] | None) -> str:
    return f" (95% CI {100 * pair[0]:.1f}-{100 * pair[1]:.1f})" if pair else ""


def report(ctx: Context, out: Callable[[str], None] = print) -> int:
    meta = read_meta(ctx.shipped) or {}
    test = (meta.get("metrics") or {}).get("test") or {}
    cv = test.get("covid_vs_rest") or {}
    d = ctx.decision
    out(f"\nNumbers for {ctx.name} (from {show([str(ctx.shipped / 'bundle.json')])} and docs/results/):")
    if test:
        out(f"  test (n={test.get('n')}): accuracy {pct(test.get('accuracy'))}{ci(test.get('accuracy_ci95'))}, "
            f"COVID sensitivity {pct(cv.get('sensitivity'))} ({cv.get('tp')}/{(cv.get('tp') or 0) + (cv.get('fn') or 0)})"
            f"{ci(cv.get('sensitivity_ci95'))}, macro AUC {test.get('macro_auc', float('nan')):.3f}")
    if d.get("candidate"):
        out(f"  val: accuracy {pct(d['shipped']['accuracy'])} -> {pct(d['candidate']['accuracy'])}, COVID sensitivity "
            f"{pct(d['shipped']['covid_sensitivity'])} -> {pct(d['candidate']['covid_sensitivity'])}"
            + (" (--force)" if d.get("forced") else ""))
    tr = meta.get("training") or {}
    if tr:
        prog = meta.get("progressive") or {}
        out(f"  training: {tr.get('epochs_run')} epochs (best {tr.get('best_epoch')}), "
            f"{(tr.get('train_seconds') or 0) / 3600:.1f} h" + (
                f"; after {prog.get('epochs_run')} epochs at {'x'.join(map(str, prog.get('input_shape', [])))} "
                f"({(prog.get('train_seconds') or 0) / 3600:.1f} h, {prog.get('init_from')})" if prog else ""))
    sizes = {k: (ctx.shipped / v).stat().st_size / 1e6 for k, v in (meta.get("artifacts") or {}).items()
             if (ctx.shipped / v).is_file()}
    gate = meta.get("gate") or {}
    for key, mb in sizes.items():
        g = gate.get(key) or {}
        extra = ""
        if key == "onnx_int8":
            cal = meta.get("calibration") or {}
            floats = ((cal.get("fallback") or {}).get("float_nodes"))
            extra = (f", {cal.get('method')}, {len(floats) if floats is not None else 'n/a'} node(s) in float, "
                     f"{100 * mb / sizes['onnx_fp16']:.0f}% of FP16" if "onnx_fp16" in sizes else "")
        out(f"  {key}: {mb:.1f} MB{extra}; gate on {g.get('split')}: accuracy {pct(g.get('accuracy'))}, COVID "
            f"{pct(g.get('covid_sensitivity'))}, agreement {pct(g.get('top1_agreement'))}, "
            f"{'passed' if g.get('passed') else 'NOT passed'}")
    ood = (meta.get("confidence") or {}).get("ood") or {}
    if ood:
        out("  OOD thresholds: " + ", ".join(f"{k} {v:g}" for k, v in (ood.get("thresholds") or {}).items()))
    calib = REPO / "docs" / "results" / "calibration.json"
    labels: dict[str, str] = {}
    if calib.is_file():
        models = json.loads(calib.read_text()).get("models") or {}
        for m, r in models.items():
            row = ((r.get("pool") or {}).get("methods") or {}).get(r.get("chosen")) or {}
            labels[m] = pct(row.get("test_accuracy"))
            out(f"  {m}: calibrated label on test ({r.get('chosen')}): {labels[m]} "
                f"(raw argmax {pct(r.get('test_accuracy'))}), test ECE {row.get('test_ece')}")
    title = {"coronet": "CoroNet", "cnn-lstm": "CNN-LSTM"}[ctx.name]
    headline = f"{title} {pct(test.get('accuracy'))} `test` accuracy with {pct(cv.get('sensitivity'))} COVID sensitivity"
    calibrated = " and ".join(labels.get(m, "n/a") for m in MODELS)
    val = d.get("candidate") or {}
    out("\nLeft by hand:")
    for line in (
        f"README.md \"Status\", first bullet: \"{headline}\"; the calibrated labels: \"{calibrated} on `test`\"",
        "docs/REPRODUCTION.md: the Summary table, \"Results on `test`\" for this model, the long-run status",
        f"CHANGELOG.md, today: \"{title} republished from {d.get('run', ctx.run.name)}: val accuracy "
        f"{pct((d.get('shipped') or {}).get('accuracy'))} -> {pct(val.get('accuracy'))}; {headline}\" (+ the INT8 line above)",
        "docs/SAFETY.md: its numbers from docs/results/{safety-NAME,calibration,ood-report,orientation-gate}.json",
        "docs/QUANTIZATION.md: this model's INT8 section (bundle.json \"calibration\", calibration/ files)",
        "scripts/model_card.py FAILURES: still true of the new model? (then rerun the card step)",
        "git add edgecxr/reference/NAME calibration/ docs/results/ docs/img/ docs/models/NAME.md; check that the "
        "other model's bundle.json did not change (calibration --write-bundles refits it on the same data)",
    ):
        out("  - " + line.replace("NAME", ctx.name))
    return 0


# -- main ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=MODELS, help="the shipped model to replace")
    ap.add_argument("run", type=Path, help="the finished run's folder (its bundle.json)")
    ap.add_argument("--init-from", type=Path, help="the run whose weights started this one (progressive resizing); "
                    "default: the run training.config.weights names, if it is a bundle")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr" / "manifest.csv",
                    help="manifest with the val, calib and test splits")
    ap.add_argument("--train-data", type=Path, help="manifest of the OOD statistics' train split [default: the one "
                    "the run was trained on, beside --data]")
    ap.add_argument("--ood-data", type=Path, help="manifest for the OOD and orientation reports [default: "
                    "manifest-extended.csv beside --data]")
    ap.add_argument("--int8-method", help="INT8 calibration method [default: the shipped INT8's]")
    ap.add_argument("--reference-dir", type=Path, default=INSTALLED,
                    help="where the shipped models live (for the decision and tests; the steps after record know "
                         "only edgecxr/reference)")
    ap.add_argument("--from", dest="start", choices=STEPS, default=STEPS[0], help="resume the chain at this step")
    ap.add_argument("--force", action="store_true", help="republish even if the val decision says no (recorded)")
    ap.add_argument("--dry-run", action="store_true", help="print the decision and the chain; run nothing")
    args = ap.parse_args(argv)
    run = args.run.expanduser().absolute()
    ref = args.reference_dir.expanduser().absolute()
    data = args.data.expanduser().absolute()
    start = STEPS.index(args.start)
    after_package = start > STEPS.index("package")

    shipped = read_meta(ref / args.name)
    if shipped is None:
        print(f"error: no shipped model {args.name} in {ref}", file=sys.stderr)
        return 2
    cand = read_meta(run)
    if cand is None:
        if args.dry_run:
            print(f"val decision: to be computed when {run}/bundle.json exists (the run has not finished; until "
                  "then --train-data and --init-from below are their defaults, not what the run names)")
            print_chain(context(args, run, ref, data, {}, shipped), start)
            return 0
        print(f"error: {run}: no bundle.json yet (the run has not finished: bash scripts/long_runs.sh status)",
              file=sys.stderr)
        return 1
    if cand.get("model") != shipped.get("model") or cand.get("classes") != shipped.get("classes"):
        print(f"error: {run.name} is a {cand.get('model')} model with classes {cand.get('classes')}; "
              f"{args.name} is {shipped.get('model')} with {shipped.get('classes')}", file=sys.stderr)
        return 2

    ships_run = (shipped.get("copied_from") or {}).get("bundle") == run.name
    taken = kept_decision(args, run, after_package) if ships_run else \
        new_decision(args, run, ref, data, shipped, cand, after_package, start)
    if isinstance(taken, int):
        return taken
    decision, cand = taken
    ctx = context(args, run, ref, data, decision, shipped, cand)
    if args.dry_run:
        print_chain(ctx, start)
        return 0
    steps = chain(ctx)[start:]
    names = {s.name for s in steps}
    needed = [ctx.data, *([ctx.train_data] if names & {"confidence", "refit"} else []),
              *([ctx.ood_data] if names & {"ood", "orientation"} else []),
              *([ctx.init_from / "bundle.json"] if ctx.init_from is not None and "package" in names else [])]
    missing = [p for p in needed if not p.is_file()]
    if missing:  # checked before any step: found missing later, it would be after `test` was read
        print(f"error: {missing[0]} not found", file=sys.stderr)
        return 1
    blocked = [s.name for s in steps if s.name in INSTALLED_ONLY]
    if ref != INSTALLED and blocked:
        print(f"error: --reference-dir {ref}: the steps {', '.join(blocked)} know only {INSTALLED}; "
              "use --dry-run, or the installed folder", file=sys.stderr)
        return 2
    if not ships_run:
        (run / DECISION).write_text(json.dumps(decision, indent=1) + "\n")
    for i, step in enumerate(steps, start + 1):
        print(f"\n{step.header(i)}", flush=True)
        rc = run_argv(step.argv) if step.argv is not None else in_process(step)
        if rc:
            print(f"\nrepublish: {step.name} failed (exit {rc}); once fixed, resume with --from {step.name}",
                  file=sys.stderr)
            if STEPS.index(step.name) > STEPS.index("package"):  # the candidate is already in the checkout
                print(f"republish: {ctx.shipped} now holds the candidate, unfinished; `git checkout -- "
                      f"{ctx.shipped}` (and `git status` for new files) restores the shipped model", file=sys.stderr)
            return rc
    return 0


def in_process(step: Step) -> int:
    """An in-process step's exit status; edgecxr's own errors as one line, as its commands print them."""
    from edgecxr.core.errors import EdgeCXRError

    try:
        return step.action()
    except (EdgeCXRError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)


def kept_decision(args: argparse.Namespace, run: Path, after_package: bool) -> int | tuple[dict, dict | None]:
    """The decision taken when the run was packaged (the shipped model is a copy of the run by now)."""
    recorded = run / DECISION
    if not recorded.is_file():
        print(f"error: {args.name} already ships {run.name} and {recorded} does not say why; nothing to decide",
              file=sys.stderr)
        return 1
    if not after_package:
        print(f"error: {args.name} already ships {run.name} (package ran): resume with --from a step after "
              f"package, or restore the shipped model (git checkout -- edgecxr/reference/{args.name}) to start over",
              file=sys.stderr)
        return 2
    decision = json.loads(recorded.read_text())
    print(f"val decision taken {decision.get('time')} ({recorded}):")
    print(table([(f"shipped then ({(decision.get('replaced') or {}).get('bundle')})", decision["shipped"]),
                 (f"candidate {run.name}", decision["candidate"])]))
    return decision, read_meta(run)


def new_decision(args: argparse.Namespace, run: Path, ref: Path, data: Path, shipped: dict, cand: dict,
                 after_package: bool, start: int) -> int | tuple[dict, dict | None]:
    """The val decision, before anything reads `test`; an exit status where the chain must not run."""
    if after_package:
        print(f"error: --from {args.start}: {args.name} does not ship {run.name} yet; start at package or "
              "earlier (the val decision comes first)", file=sys.stderr)
        return 2
    if (cand.get("metrics") or {}).get("test"):
        print(f"note: {run.name} already records metrics.test (test was read for it before)")
    row = val_row(cand)
    if row is None:
        evaluate = [sys.executable, "-m", "edgecxr", "evaluate", "-m", str(run), "--data", str(data),
                    "--split", "val", "-q"]
        print(f"{run.name} records no metrics.val: evaluated on val first\n+ {show(evaluate)}", flush=True)
        if args.dry_run:
            print("val decision: to be computed after that evaluation")
            print_chain(context(args, run, ref, data, {}, shipped), start)
            return 0
        rc = run_argv(evaluate)
        if rc:
            print(f"republish: the val evaluation failed (exit {rc})", file=sys.stderr)
            return rc
        cand = read_meta(run) or {}
        row = val_row(cand)
    ship_row = val_row(shipped)
    if row is None or ship_row is None:
        print(f"error: no val metrics for {'the shipped model' if ship_row is None else run.name}", file=sys.stderr)
        return 1
    print(table([(f"shipped {args.name}", ship_row), (f"candidate {run.name}", row)]))
    ok, why = decide(row, ship_row)
    if not ok and not args.force:
        print(f"republish: no: {why}")
        return 1
    print(f"republish: {'yes' if ok else 'forced (--force)'}: {why}")
    return {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "run": run.name,
            "rule": "val accuracy higher and COVID sensitivity not lower", "passed": ok, "forced": not ok,
            "reason": why, "candidate": row, "shipped": ship_row,
            "replaced": {"bundle": (shipped.get("copied_from") or {}).get("bundle"),
                         "git_commit": shipped.get("git_commit")},
            "int8_method": args.int8_method or shipped_int8_method(shipped)}, cand


def shipped_int8_method(shipped: dict[str, Any]) -> str:
    """The calibration method of the INT8 being replaced: the new one is calibrated the same way."""
    return (shipped.get("calibration") or {}).get("method") or "minmax"


def context(args: argparse.Namespace, run: Path, ref: Path, data: Path, decision: dict[str, Any],
            shipped: dict[str, Any], cand: dict[str, Any] | None = None) -> Context:
    """Paths the chain needs, from the options or else from the run's own bundle.json."""
    cand = cand or {}
    trained_on = Path((cand.get("dataset") or {}).get("manifest") or data.name).name
    init_from = args.init_from
    weights = ((cand.get("training") or {}).get("config") or {}).get("weights") or ""
    if init_from is None and weights.endswith(".keras") and (Path(weights).parent / "bundle.json").is_file():
        init_from = Path(weights).parent
        print(f"progressive resizing: --init-from {init_from} (the run's training.config.weights)")
    elif init_from is not None and weights and Path(weights).parent.name != init_from.name:
        print(f"note: --init-from {init_from.name}, but the run started from {weights}")
    method = args.int8_method or decision.get("int8_method") or shipped_int8_method(shipped)
    return Context(args.name, run, data, (args.train_data or data.with_name(trained_on)).expanduser().absolute(),
                   (args.ood_data or data.with_name("manifest-extended.csv")).expanduser().absolute(), ref,
                   init_from.expanduser().absolute() if init_from else None, method, decision)


def print_chain(ctx: Context, start: int) -> None:
    print(f"\ndry run: the chain{f' from {STEPS[start]}' if start else ''}, nothing run:")
    for i, step in enumerate(chain(ctx)[start:], start + 1):
        print(step.header(i))


if __name__ == "__main__":
    sys.exit(main())
