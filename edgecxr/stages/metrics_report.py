"""Text reports of the metrics in edgecxr.stages.metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"


def _summary_lines(result: dict[str, Any]) -> list[str]:
    """Accuracy, AUC, COVID-vs-rest and non-COVID lines shared by the text and Markdown reports."""
    boot = result.get("bootstrap", {})
    lines = [
        f"accuracy {_f(result['accuracy'])}{_ci(result.get('accuracy_ci95'))}",
        f"macro AUC (one-vs-rest) {_f(result.get('macro_auc'))}{_ci(result.get('macro_auc_ci95'))}",
    ]
    if result.get("auc_skipped"):
        lines.append(
            f"  AUC not defined for {', '.join(result['auc_skipped'])} (no positives or no negatives)"
        )
    if boot.get("resamples"):
        lines.append(f"  CIs: {boot['resamples']} bootstrap resamples of images, seed {boot['seed']}")
    cv = result.get("covid_vs_rest")
    if cv:
        lines.append(
            f"{cv.get('positive', 'covid')} vs rest: sensitivity {_f(cv['sensitivity'])}{_ci(cv.get('sensitivity_ci95'))}, "
            f"specificity {_f(cv['specificity'])}{_ci(cv.get('specificity_ci95'))}, precision {_f(cv['precision'])}, "
            f"F1 {_f(cv['f1'])} (tp {cv['tp']}, fp {cv['fp']}, tn {cv['tn']}, fn {cv['fn']})"
        )
    nc = result.get("non_covid_only")
    if nc:
        recalls = ", ".join(f"{c} {_f(v)}" for c, v in nc["recall"].items())
        positive = cv.get("positive", "covid") if cv else "covid"
        extra = f"; {nc['predicted_positive']} of them predicted {positive} when unrestricted"
        lines.append(
            f"non-COVID only (n={nc['n']}, argmax over {'/'.join(nc['classes'])}): "
            f"accuracy {_f(nc['accuracy'])}{_ci(nc.get('accuracy_ci95'))}; recall {recalls}{extra}"
        )
    return lines


def format_report(result: dict[str, Any], title: str = "") -> str:
    """Fixed-width text report of an `evaluate_predictions` result, for the terminal and logs."""
    classes = list(result["classes"])
    cm = result["confusion_matrix"]
    name_w = max(len("macro"), *(len(c) for c in classes)) + 2
    out: list[str] = []
    if title:
        out += [f"{title} (n={result['n']})", "=" * (len(title) + len(str(result["n"])) + 5)]
    out.append("Confusion matrix (rows = true, columns = predicted)")
    col_w = [max(len(c), 5) + 2 for c in classes]
    out.append(" " * name_w + "".join(c.rjust(w) for c, w in zip(classes, col_w, strict=True)))
    for c, row in zip(classes, cm, strict=True):
        out.append(c.ljust(name_w) + "".join(str(v).rjust(w) for v, w in zip(row, col_w, strict=True)))
    out.append("")
    heads = ["precision", "recall", "specificity", "f1", "support", "auc"]
    out.append("class".ljust(name_w) + "".join(h.rjust(12) for h in heads))
    for c in classes:
        m = result["per_class"][c]
        cells = [
            _f(m["precision"]),
            _f(m["recall"]),
            _f(m["specificity"]),
            _f(m["f1"]),
            str(m["support"]),
            _f(m.get("auc")),
        ]
        out.append(c.ljust(name_w) + "".join(v.rjust(12) for v in cells))
    macro = [
        _f(result["macro_precision"]),
        _f(result["macro_recall"]),
        "",
        _f(result["macro_f1"]),
        str(result["n"]),
        _f(result.get("macro_auc")),
    ]
    out.append("macro".ljust(name_w) + "".join(v.rjust(12) for v in macro))
    out.append("")
    out += _summary_lines(result)
    return "\n".join(out) + "\n"
