"""The gate's human-readable report and the files it leaves in the bundle."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgecxr.core.bundle import Bundle
from edgecxr.core.fileutil import atomic_write_text, sha256_file, write_json
from edgecxr.stages.gate.result import VerifyResult

log = logging.getLogger(__name__)


def write_report(bundle: Bundle, result: VerifyResult) -> tuple[Path, Path]:
    """verify.json + verify.md into the bundle and each artifact's verdict into bundle.json["gate"].

    Only a run over the whole split is the published verdict that `auto` and `infer` act on. A
    subset run (`--limit`) writes verify-subset.json / .md and leaves bundle.json alone: four
    images passing must never replace a full split's failure.
    """
    stem = "verify-subset" if result.subset else "verify"
    json_path = write_json(bundle.dir / f"{stem}.json", result.to_dict())
    md_path = atomic_write_text(bundle.dir / f"{stem}.md", format_markdown(result))
    if not result.subset:
        record_verdicts(bundle, result, by="verify", report=json_path)
    return json_path, md_path


def record_verdicts(bundle: Bundle, result: VerifyResult, by: str, report: Path | None = None,
                    rename: dict[str, str] | None = None, paths: dict[str, Path] | None = None) -> None:
    """Record the verdicts of one gate run in bundle.json["gate"] (Bundle.record_gate).

    `rename` maps result keys to the keys the artifacts are published under (a candidate file's
    key to its final one), `paths` the files they were published as. Each row records the sha256 of
    its file, so a verdict cannot pass on to other bytes. The reference artifact is not recorded:
    it is not gated.
    """
    summary = result.summary()
    rows = {(rename or {}).get(k, k): v for k, v in summary.pop("artifacts").items() if k != result.reference}
    for key, path in (paths or {}).items():  # where a checked candidate was published
        if key in rows:
            rows[key]["path"] = str(path)
    for row in rows.values():  # the verdict names the bytes it is about (Bundle.gate_verdict compares)
        path = Path(row["path"]) if row.get("path") else None
        if path is not None and path.is_file():
            row["sha256"] = sha256_file(path)
    from edgecxr.core.artifacts import BY_KEY
    from edgecxr.runtime.arithmetic import gate_platform, onnx_arithmetic

    for key, row in rows.items():  # which arithmetic the verdict holds for (runtime/arithmetic.py)
        if key in BY_KEY and BY_KEY[key].backend == "onnxruntime" and BY_KEY[key].precision:
            row["arithmetic"] = onnx_arithmetic(BY_KEY[key].precision)
    run = {k: summary[k] for k in ("time", "split", "n", "manifest_sha256", "reference", "gates")}
    run["platform"] = gate_platform()
    if report is not None:
        run.update(report=report.name, report_sha256=sha256_file(report))
    bundle.record_gate(rows, run, by=by)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def format_markdown(result: VerifyResult) -> str:
    """verify.md: one row per artifact, then per-class sensitivity/specificity, then failures."""
    ref = result.get(result.reference)
    ref_acc = ref.metrics["accuracy"] if ref.metrics else None
    lines = [
        f"# Accuracy gate: {Path(result.bundle).name}",
        "",
        f"- data: `{result.manifest}` split **{result.split}**, n={result.n} "
        f"({', '.join(f'{c} {k}' for c, k in result.per_class.items())}); manifest sha256 `{result.manifest_sha256[:16]}…`",
        f"- reference: **{result.reference}**",
        f"- gates: accuracy drop <= {result.gates.max_acc_drop:g} pp; top-1 agreement >= {result.gates.min_agreement:.0%}; "
        f"COVID sensitivity not lower: {'yes' if result.gates.covid_sensitivity_not_lower else 'no'}"
        + (f"; max abs Δp <= {result.gates.max_prob_diff:g}" if result.gates.max_prob_diff is not None else "")
        + (f"; overrides {json.dumps(result.gates.overrides)}" if result.gates.overrides else ""),
        f"- result: **{'PASSED' if result.passed else 'FAILED'}** ({result.time})",
        "",
        "| artifact | backend | status | accuracy | Δ acc vs ref (pp) | COVID sens. | macro AUC | top-1 agree | max abs Δp | gates |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for a in result.artifacts:
        m = a.metrics or {}
        acc = m.get("accuracy")
        delta = None if acc is None or ref_acc is None else (acc - ref_acc) * 100
        cv = (m.get("covid_vs_rest") or {}).get("sensitivity")
        gate = "reference" if a.reference else {True: "pass", False: "**FAIL**", None: "–"}[a.passed]
        status = a.status if a.status == "ok" else f"{a.status}: {a.reason}".replace("|", "\\|")
        lines.append(
            f"| {a.key} | {a.backend or '–'} | {status} | {_pct(acc)} | {_num(delta, '+.2f') if not a.reference else '–'} "
            f"| {_pct(cv)} | {_num(m.get('macro_auc'))} | {_pct((a.agreement or {}).get('top1_agreement'))} "
            f"| {_num((a.agreement or {}).get('max_abs_diff'), '.2e')} | {gate} |"
        )
    scored = [a for a in result.artifacts if a.metrics]
    if scored:
        classes = list(result.per_class)
        lines += [
            "",
            "Per-class sensitivity / specificity:",
            "",
            "| artifact | " + " | ".join(classes) + " |",
            "|---|" + "---:|" * len(classes),
        ]
        for a in scored:
            pc = a.metrics["per_class"]  # type: ignore[index]
            cells = [f"{_pct(pc[c]['recall'])} / {_pct(pc[c]['specificity'])}" for c in classes]
            lines.append(f"| {a.key} | " + " | ".join(cells) + " |")
    if result.failures:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in result.failures]
    if result.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def format_text(result: VerifyResult) -> str:
    """Terminal summary: one line per artifact and the failures."""
    out = [f"verify {Path(result.bundle).name} on {result.split} (n={result.n}), reference {result.reference}"]
    for a in result.artifacts:
        if a.status != "ok":
            out.append(f"  {a.key:<18} {a.status}: {a.reason}")
            continue
        m = a.metrics or {}
        cv = (m.get("covid_vs_rest") or {}).get("sensitivity")
        line = f"  {a.key:<18} acc {_pct(m.get('accuracy')):>6}  covid sens {_pct(cv):>6}  auc {_num(m.get('macro_auc'))}"
        if a.agreement:
            line += f"  agree {_pct(a.agreement['top1_agreement']):>6}  max|dp| {a.agreement['max_abs_diff']:.2e}"
        line += "  " + ("reference" if a.reference else ("PASS" if a.passed else "FAIL"))
        out.append(line)
    for f in result.failures:
        out.append(f"  FAILED {f}")
    for n in result.notes:
        out.append(f"  note: {n}")
    return "\n".join(out) + "\n"
