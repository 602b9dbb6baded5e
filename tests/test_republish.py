"""scripts/republish.py: the val decision comes first, and the chain runs (or is printed) in its order.

Tiny bundles (tests/runtime/tinymodels.py) in tmp_path stand for the finished run and for a copy of
the shipped model (--reference-dir); the steps' commands go to a recorder instead of a subprocess,
so no test trains, evaluates or quantizes anything, and edgecxr/reference/ is never written.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from edgecxr.core.bundle import Bundle
from tests.runtime.tinymodels import make_bundle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rp():
    spec = importlib.util.spec_from_file_location("republish", REPO / "scripts" / "republish.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["republish"] = module  # its dataclasses resolve their annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("republish", None)


def _val(correct: int, covid_tp: int, n: int = 129, covid_n: int = 31) -> dict:
    return {"n": n, "accuracy": correct / n,
            "covid_vs_rest": {"sensitivity": covid_tp / covid_n, "tp": covid_tp, "fn": covid_n - covid_tp},
            "per_class": {"covid": {"recall": covid_tp / covid_n}}}


@pytest.fixture
def world(tmp_path):
    """A finished run (114/129 val, COVID 29/31 unless changed), the shipped model, a data folder."""
    run = make_bundle(tmp_path / "runs" / "coronet-e80-ema", int8=False)
    run.update(metrics={"val": _val(120, 30)}, dataset={"manifest": "/elsewhere/manifest-extended.csv"})
    ref = make_bundle(tmp_path / "reference" / "coronet")
    ref.update(metrics={"val": _val(114, 29)}, copied_from={"bundle": "coronet", "git_commit": "abc"},
               calibration={"method": "minmax"})
    data = tmp_path / "data"
    data.mkdir()
    for name in ("manifest.csv", "manifest-extended.csv"):
        (data / name).write_text("path,label,split\n")
    return {"run": run.dir, "ref": tmp_path / "reference", "data": data / "manifest.csv", "tmp": tmp_path}


def _args(w: dict, *more: str) -> list[str]:
    return ["coronet", str(w["run"]), "--reference-dir", str(w["ref"]), "--data", str(w["data"]), *more]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def recorder(rp, monkeypatch):
    """Commands the chain would run, in order; `fail` maps a script or CLI verb to the exit status it returns."""
    seen: list[list[str]] = []
    fail: dict[str, int] = {}

    def run_argv(argv: list[str]) -> int:
        seen.append(argv)
        return next((rc for key, rc in fail.items() if key in argv or any(a.endswith(key) for a in argv)), 0)

    monkeypatch.setattr(rp, "run_argv", run_argv)
    return seen, fail


def _steps(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.startswith("== ")]


def test_better_on_val_republishes_and_the_dry_run_lists_every_step_and_runs_nothing(rp, world, recorder, capsys):
    before = _files(world["tmp"])
    assert rp.main(_args(world, "--dry-run")) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    shipped = next(line for line in lines if line.startswith("shipped coronet"))
    candidate = next(line for line in lines if line.startswith("candidate coronet-e80-ema"))
    assert "88.4% (114/129)" in shipped and "93.5% (29/31)" in shipped
    assert "93.0% (120/129)" in candidate and "96.8% (30/31)" in candidate
    assert "republish: yes: val accuracy 88.4% -> 93.0%, COVID sensitivity 93.5% -> 96.8%" in out
    assert _steps(out) == list(rp.STEPS)
    commands = [line for line in lines if line.startswith("+ ")]
    assert len(commands) == len(rp.STEPS)
    assert "edgecxr export -m" in commands[0] and "edgecxr confidence -m" in commands[1]
    assert "--train-data" in commands[1] and commands[1].split("--train-data ")[1].split()[0].endswith("manifest-extended.csv")
    assert "package_reference.py" in commands[2] and "--reference-dir" in commands[2]
    assert "quantize_reference.py coronet --method minmax --fallback auto --ship" in commands[4]
    assert recorder[0] == [] and _files(world["tmp"]) == before  # nothing run, nothing written


@pytest.mark.parametrize(("correct", "covid_tp", "why"), [
    (114, 31, "val accuracy 88.4% is not higher than the shipped model's 88.4%"),
    (110, 30, "val accuracy 85.3% is not higher"),
    (125, 28, "val COVID sensitivity 90.3% is lower than the shipped model's 93.5%"),
])
def test_not_better_on_val_stops_before_anything_with_one_line(rp, world, recorder, capsys, correct, covid_tp, why):
    Bundle.load(world["run"]).update(metrics={"val": _val(correct, covid_tp)})
    before = _files(world["tmp"])
    assert rp.main(_args(world)) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("republish: no: ") and why in out.splitlines()[-1]
    assert recorder[0] == [] and _files(world["tmp"]) == before


def test_force_goes_on_records_why_and_a_failed_step_stops_the_chain_with_its_status(rp, world, recorder, capsys,
                                                                                    monkeypatch):
    monkeypatch.setattr(rp, "INSTALLED", world["ref"])  # the tmp copy stands for edgecxr/reference here
    Bundle.load(world["run"]).update(metrics={"val": _val(100, 31)})
    seen, fail = recorder
    fail["confidence"] = 3
    assert rp.main(_args(world, "--force")) == 3
    out, err = capsys.readouterr()
    assert "republish: forced (--force): val accuracy 77.5% is not higher" in out
    assert [a[3] for a in seen] == ["export", "confidence"]
    assert "confidence failed (exit 3)" in err and "--from confidence" in err
    decision = json.loads((world["run"] / "republish.json").read_text())
    assert decision["forced"] is True and decision["passed"] is False and decision["candidate"]["accuracy"] == 100 / 129
    assert decision["replaced"]["bundle"] == "coronet"
    assert "republished" not in Bundle.load(world["ref"] / "coronet").meta  # record comes after package


def test_a_step_failing_after_package_says_how_to_restore_the_shipped_model(rp, world, recorder, capsys, monkeypatch):
    """Past `package` the candidate is in the shipped folder: a failure (an INT8 gate, say) must say so and how to undo.

    Here `record` fails (the recorded `package` copied nothing in), a step after `package` like `int8`."""
    monkeypatch.setattr(rp, "INSTALLED", world["ref"])
    _, fail = recorder
    assert rp.main(_args(world)) == 1
    err = capsys.readouterr().err
    assert "record failed (exit 1)" in err
    assert f"git checkout -- {world['ref'] / 'coronet'}" in err and "restores the shipped model" in err
    fail.clear()
    fail["confidence"] = 3  # before package: nothing was copied in, nothing to restore
    assert rp.main(_args(world)) == 3
    assert "git checkout" not in capsys.readouterr().err


def test_from_resumes_after_package_and_skips_the_earlier_steps(rp, world, recorder, capsys, monkeypatch):
    monkeypatch.setattr(rp, "INSTALLED", world["ref"])
    assert rp.main(_args(world, "--dry-run", "--from", "int8")) == 2  # the shipped model is not the run yet
    assert "does not ship coronet-e80-ema yet" in capsys.readouterr().err
    # as package_reference leaves things: the shipped model is a copy of the run, the decision kept beside the run
    decision = {"time": "2026-12-20T10:00:00+00:00", "run": "coronet-e80-ema", "passed": True, "forced": False,
                "candidate": rp.val_row(Bundle.load(world["run"]).meta), "int8_method": "percentile",
                "shipped": rp.val_row(Bundle.load(world["ref"] / "coronet").meta), "replaced": {"bundle": "coronet"}}
    (world["run"] / "republish.json").write_text(json.dumps(decision))
    test = {**_val(102, 29, n=126, covid_n=30), "accuracy_ci95": [0.74, 0.87], "macro_auc": 0.95}
    Bundle.load(world["ref"] / "coronet").update(copied_from={"bundle": "coronet-e80-ema"},
                                                 metrics={**Bundle.load(world["run"]).meta["metrics"], "test": test})

    assert rp.main(_args(world, "--dry-run", "--from", "int8")) == 0
    out = capsys.readouterr().out
    assert _steps(out) == list(rp.STEPS[rp.STEPS.index("int8"):])
    assert "--method percentile" in out  # the method recorded when the old INT8 was still shipped

    seen, _ = recorder
    assert rp.main(_args(world, "--from", "record")) == 0
    out = capsys.readouterr().out
    assert _steps(out) == list(rp.STEPS[rp.STEPS.index("record"):])
    scripts = [Path(a[1]).name for a in seen]
    assert scripts == ["quantize_reference.py", "calibration_report.py", "safety_report.py", "ood_report.py",
                       "orientation_report.py", "model_card.py"]
    assert Bundle.load(world["ref"] / "coronet").meta["republished"]["candidate"]["accuracy"] == 120 / 129
    assert "test (n=126): accuracy 81.0% (95% CI 74.0-87.0), COVID sensitivity 96.7% (29/30)" in out
    assert 'README.md "Status", first bullet: "CoroNet 81.0% `test` accuracy with 96.7% COVID sensitivity"' in out
    assert "republished from coronet-e80-ema: val accuracy 88.4% -> 93.0%" in out

    assert rp.main(_args(world, "--from", "export")) == 2  # package again would read test again
    assert "already ships coronet-e80-ema" in capsys.readouterr().err


def test_without_metrics_val_the_run_is_evaluated_on_val_first(rp, world, recorder, capsys, monkeypatch):
    monkeypatch.setattr(rp, "INSTALLED", world["ref"])
    run = Bundle.load(world["run"])
    run.meta.pop("metrics")
    run.save()
    assert rp.main(_args(world, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "edgecxr evaluate -m" in out and "--split val" in out and "to be computed after that evaluation" in out

    seen, fail = recorder
    fail["export"] = 5

    def evaluate_then_record(argv):  # what `edgecxr evaluate --split val` leaves in bundle.json
        seen.append(argv)
        if "evaluate" in argv:
            Bundle.load(world["run"]).update(evaluations={"val": {"n": 129, "accuracy": 0.93, "covid_sensitivity": 1.0}})
            return 0
        return 5

    monkeypatch.setattr(rp, "run_argv", evaluate_then_record)
    assert rp.main(_args(world)) == 5
    out = capsys.readouterr().out
    assert [a[3] for a in seen] == ["evaluate", "export"]
    assert "[evaluations.val]" in out and "republish: yes" in out


def test_an_unfinished_run_and_a_foreign_model_are_refused(rp, world, capsys):
    missing = world["tmp"] / "runs" / "not-yet"
    args = ["coronet", str(missing), "--reference-dir", str(world["ref"]), "--data", str(world["data"])]
    assert rp.main([*args, "--dry-run"]) == 0
    assert "to be computed when" in capsys.readouterr().out
    assert rp.main(args) == 1
    assert "no bundle.json yet" in capsys.readouterr().err
    Bundle.load(world["run"]).update(model="cnn-lstm")
    assert rp.main(_args(world, "--dry-run")) == 2
    assert "is a cnn-lstm model" in capsys.readouterr().err


def test_refit_only_when_the_shipped_confidence_names_a_file_that_is_not_shipped(rp, world, monkeypatch, capsys):
    import edgecxr.stages.confidence.run as confidence_run

    calls = []
    monkeypatch.setattr(confidence_run, "fit_confidence", lambda *a, **k: calls.append((a, k)))
    ctx = rp.context(rp.argparse.Namespace(name="coronet", init_from=None, int8_method=None, train_data=None,
                                           ood_data=None), world["run"], world["ref"], world["data"], {}, {},
                     Bundle.load(world["run"]).meta)
    shipped = Bundle.load(world["ref"] / "coronet")
    shipped.update(confidence={"calibrator": {"artifact": "onnx_fp16"}, "ood": {"statistics_from": {"artifact": "onnx_fp16"}}})
    assert rp.refit(ctx) == 0 and calls == []
    assert "not needed" in capsys.readouterr().out
    # as the run's own fit leaves it when no INT8 step refitted it: fitted on the run's FP32, which is not shipped
    shipped.update(confidence={"calibrator": {"artifact": "onnx_fp32"}, "ood": {"statistics_from": {"artifact": "onnx_fp32"}}})
    shipped.meta["artifacts"].pop("onnx_fp32")
    shipped.meta.get("artifact_sha256", {}).pop("onnx_fp32", None)
    shipped.save()
    assert rp.refit(ctx) == 0
    assert [c[0][0] for c in calls] == [world["ref"] / "coronet"]
    assert calls[0][1]["train_manifest"] == world["data"].with_name("manifest-extended.csv")
