"""Write docs/models/NAME.md from a shipped reference model's bundle.json (every number from the bundle).

    python scripts/model_card.py coronet     # reads edgecxr/reference/coronet/bundle.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgecxr.core.bundle import Bundle
from edgecxr.runtime.store import REFERENCE_DIR

REPO = Path(__file__).resolve().parents[1]
PAPERS = {
    "coronet": "CoroNet (Khan, Shah & Bhat 2020): Xception + Flatten + Dropout(0.5) + Dense(256) + Dense(4)",
    "cnn-lstm": "CNN-LSTM (Islam, Islam & Asraf 2020): VGG16-style conv blocks to 7x7x512, read as 49 steps by an LSTM(512)",
}


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def ci(pair: list[float] | None) -> str:
    return "" if not pair else f" (95% CI {100 * pair[0]:.1f}-{100 * pair[1]:.1f})"


def auc_ci(pair: list[float] | None) -> str:
    return "" if not pair else f" (95% CI {pair[0]:.3f}-{pair[1]:.3f})"


def card(name: str, reference_dir: Path = REFERENCE_DIR) -> str:
    bundle = Bundle.load(reference_dir / name)
    m = bundle.meta
    test = m["metrics"]["test"]
    tr = m["training"]
    cfg = tr["config"]
    classes = bundle.classes
    cv = test.get("covid_vs_rest", {})
    lines = [
        f"# Model card: `{name}` (edgecxr reference model)",
        "",
        f"**Architecture.** {PAPERS[bundle.model]}. {m['architecture']['params']:,} parameters, input "
        f"{'x'.join(map(str, m['input_shape']))} (`{bundle.spec.id}`), classes {', '.join(classes)}."
        + _steps_note(m),
        "",
        "**Intended use.** Research and engineering of the edgecxr pipeline: a realistic model to export, "
        "quantize, build into TensorRT engines and deploy beside a scanner. **Not for diagnosis, triage or "
        "any clinical decision.** It has not been validated clinically, and its data are confounded (below).",
        "",
        "## Data",
        f"- Trained on `{Path(m['dataset']['manifest']).name}` (sha256 `{m['dataset']['sha256'][:16]}…`), split "
        "`train`; model selection on `val`; `test` read once for this card. Splits are by patient group "
        "(no patient in two splits); see `../shared/data/cxr/DATA_SOURCES.md`.",
        f"- Training images per class: {', '.join(f'{c} {n}' for c, n in m['dataset']['counts']['train'].items())}; "
        f"val: {', '.join(f'{c} {n}' for c, n in m['dataset']['counts']['val'].items())}.",
        "- **Source confounding.** Every COVID image comes from ieee8023 (adults, many hospitals, figures from "
        "papers); every other image from one paediatric centre (Kermany et al., Guangzhou). A model can separate "
        "COVID from the rest by age, scanner or file history without looking at the lungs, so COVID sensitivity "
        "and specificity are upper bounds on what it learned about COVID-19. The less confounded figure is "
        "the normal/bacterial/viral-only result below (one centre).",
        "",
        "## Training",
        f"- Recipe `{tr.get('recipe')}`: {tr['optimizer']['name']} lr {cfg['lr']:g} "
        f"(schedule {tr['optimizer'].get('schedule')}, warm-up {tr['optimizer'].get('warmup_epochs')} epochs), "
        f"weight decay {tr['optimizer'].get('weight_decay')}, batch {cfg['batch_size']}, label smoothing "
        f"{tr['loss'].get('label_smoothing')}, augmentation `{cfg['augment']}`, class weights {cfg['class_weights']}, "
        f"training precision {tr.get('dtype_policy')}, random initial weights.",
        f"- Epochs run {tr['epochs_run']}, best (lowest val loss) epoch {tr['best_epoch']}; "
        f"training time {tr['train_seconds'] / 60:.0f} min ({tr['seconds_per_epoch']:.0f} s per epoch).",
        f"- Machine: {tr['machine']['processor']}, {tr['machine']['cpus_usable']} usable cores, "
        f"Keras {tr['machine']['keras']} on {tr['machine']['backend']}; finished {tr['finished']}.",
    ]
    prog = m.get("progressive")
    if prog:
        lines.append(
            f"- Progressive resizing: the weights above started from `{prog['init_from']}`, trained with recipe "
            f"`{prog['recipe']}` (peak lr {prog['lr']:g}) at {'x'.join(map(str, prog['input_shape']))} on "
            f"`{prog['dataset']['manifest']}` (train: "
            f"{', '.join(f'{c} {n}' for c, n in prog['dataset']['counts']['train'].items())}) for "
            f"{prog['epochs_run']} epochs (best {prog['best_epoch']}, {prog['train_seconds'] / 60:.0f} min); this card's "
            "training lines describe the final fine-tuning at the full input size.")
    lines += ["- Exact commands and wall-clock times: docs/REPRODUCTION.md, section \"The reference runs\".", "", "## Test results (n="
              f"{test['n']}, patient-disjoint)", "",
              f"- Accuracy **{pct(test['accuracy'])}**{ci(test.get('accuracy_ci95'))}; macro AUC "
              f"{test['macro_auc']:.3f}{auc_ci(test.get('macro_auc_ci95'))}.",
              f"- COVID sensitivity **{pct(cv.get('sensitivity'))}**{ci(cv.get('sensitivity_ci95'))} "
              f"({cv.get('tp')} of {cv.get('tp', 0) + cv.get('fn', 0)}), specificity {pct(cv.get('specificity'))}"
              f"{ci(cv.get('specificity_ci95'))}."]
    nc = test.get("non_covid_only")
    if nc:
        lines.append(f"- Without COVID images (one centre, the less confounded task): accuracy {pct(nc['accuracy'])}"
                     f"{ci(nc.get('accuracy_ci95'))} on {nc.get('n')} images.")
    lines += ["", "| class | precision | recall | specificity | AUC | n |", "|---|---:|---:|---:|---:|---:|"]
    for c in classes:
        pc = test["per_class"][c]
        lines.append(f"| {c} | {pct(pc['precision'])} | {pct(pc['recall'])} | {pct(pc['specificity'])} | "
                     f"{pc['auc']:.3f} | {pc['support']} |")
    lines += ["", "Confusion matrix (rows true, columns predicted):", "",
              "| true \\ predicted | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for c, row in zip(classes, test["confusion_matrix"], strict=True):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    verdicts = bundle.gate_verdicts()
    verify = next(iter(verdicts.values()), {})  # the run facts (split, n, reference) of the gate
    lines += ["", "## Shipped artifacts and the accuracy gate", "",
              f"Gate on `{verify.get('split')}` (n={verify.get('n')}) against the {verify.get('reference')} model: "
              "accuracy drop <= 1 pp, COVID sensitivity not lower, top-1 agreement >= 98%.", "",
              "| artifact | file | size | sha256 | gate |", "|---|---|---:|---|---|"]
    for key, rel in m["artifacts"].items():
        size = (bundle.dir / rel).stat().st_size / 1e6
        gate = verdicts.get(key) or {}
        verdict = {True: "passed", False: "FAILED", None: "not gated"}[gate.get("passed")]
        extra = (f" (top-1 agreement {pct(gate.get('top1_agreement'))}, accuracy {pct(gate.get('accuracy'))}, "
                 f"COVID sensitivity {pct(gate.get('covid_sensitivity'))})" if gate.get("top1_agreement") is not None else "")
        lines.append(f"| {key} | {rel} | {size:.1f} MB | `{m['artifact_sha256'][key][:16]}…` | {verdict}{extra} |")
    lines += ["", "The FP32 model is not shipped (size); its probabilities on `test` are, per image sha256 "
              "(`reference_probs.json`), so an engine built from this model is gated against the trained model "
              "(`edgecxr verify --reference stored_fp32`).", "", "## Known failure modes", ""]
    lines += _resolution_lines(m) + FAILURES[bundle.model]
    lines += _confidence_lines(m.get("confidence"))
    return "\n".join(lines) + "\n"


def _confidence_lines(conf: dict | None) -> list[str]:
    """Calibration and abstention as fitted by `edgecxr confidence` (docs/SAFETY.md has the rates)."""
    if not conf:
        return ["- Probabilities are not calibrated and there is no out-of-distribution abstention "
                "(`edgecxr confidence` has not been run on this bundle)."]
    t, ood = conf.get("calibrator") or {"kind": "temperature", **conf["temperature"]}, conf["ood"]
    thr = ", ".join(f"{k.upper()} {v:.3f}" for k, v in ood["thresholds"].items())
    splits = t.get("fitted_on") if isinstance(t.get("fitted_on"), list) else ["val"]
    where = " + ".join(f"`{s}`" for s in splits)
    how = {"none": "not recalibrated (no calibrator beat the raw probabilities in cross-validation",
           "temperature": f"temperature-scaled (T = {t.get('temperature', t.get('value', 1.0)):.3f}",
           "vector": "recalibrated by vector scaling (the label is the calibrated argmax",
           "dirichlet": "recalibrated by Dirichlet scaling (the label is the calibrated argmax"}[t["kind"]]
    return [
        f"- Probabilities are {how}, fitted on {where}: ECE {t['ece_before']:.3f} -> {t['ece_after']:.3f} there; "
        "on `test`, with its bootstrap interval, see docs/SAFETY.md).",
        f"- Out-of-distribution abstention: {ood['method']} score on the penultimate features (statistics from "
        f"{ood['statistics_from']['n']} `train` images), threshold {thr} (conformal rank of `val`). Noise, blanks, "
        "text, color photos, CT/MR/US DICOMs, lateral DICOMs, most negatives and most films turned 90 degrees are refused (input checks or "
        "abstention); upside-down films are not (per kind, for this model: docs/SAFETY.md).",
    ]


def _steps_note(m: dict) -> str:
    """The CNN-LSTM's map and LSTM steps at the shipped side, where it is not the paper's 224."""
    side = m["input_shape"][0]
    if m["model"] != "cnn-lstm" or side == 224:
        return ""
    return f" At {side}x{side} the map is {side // 32}x{side // 32}x512, read as {(side // 32) ** 2} steps."


def _resolution_lines(m: dict) -> list[str]:
    """What the input side costs, from the bundle: under the paper's 224, or 224 reached from 128."""
    side, pre = m["input_shape"][0], m.get("progressive") or {}
    if m["model"] != "cnn-lstm":
        return []
    if side < 224:
        return [f"- Trained and run at {side}x{side}, under the paper's 224x224 (the side chosen on `val`; see "
                "REPRODUCTION): fine detail that only the full resolution shows is not seen."]
    if pre:
        first = "x".join(map(str, pre["input_shape"][:2]))
        return [f"- Trained mostly at {first} ({pre['epochs_run']} epochs) and fine-tuned at {side}x{side} for "
                f"{m['training']['epochs_run']} (progressive resizing; see REPRODUCTION): fine detail that only "
                "the full resolution shows is under-used."]
    return []


FAILURES = {
    "coronet": [
        "- Bacterial vs viral pneumonia is the main error (see the matrix): the two look alike on a film, and "
        "the labels come from the Kermany file names, not from microbiology.",
        "- Adult images of any kind are pushed towards `covid`, because every adult image in training was COVID "
        "(source confounding). A healthy adult chest film is outside what this model has seen.",
    ],
    "cnn-lstm": [
        "- `pneumonia` merges bacterial and viral; `normal` vs `pneumonia` errors are children's films from one "
        "centre, so the figures may not transfer to adults or other scanners.",
        "- Adult images are pushed towards `covid` (source confounding).",
    ],
}


if __name__ == "__main__":
    names = sys.argv[1:]
    ref, docs = REFERENCE_DIR, REPO / "docs" / "models"
    if len(names) > 2 and names[0] == "--dirs":  # testing: --dirs REFERENCE_DIR OUT_DIR NAME...
        ref, docs, names = Path(names[1]), Path(names[2]), names[3:]
    for name in names:
        out = docs / f"{name}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(card(name, ref))
        print(out)
