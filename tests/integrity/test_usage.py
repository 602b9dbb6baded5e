"""Campaign family "usage": malformed command lines get one `error:` line and exit 2 (1 for a missing
file or model, which is not a usage mistake), never a traceback or a three-line Click message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from integrity import hostile
from integrity.campaign import Case, Plan, run_case

B = "{bundle}"
IMG = "{image}"

#: name -> (argv with {bundle}/{image} placeholders, expected exit code)
LINES: dict[str, tuple[list[str], int]] = {
    "top-level-bogus-option": (["--bogus"], 2),
    "bogus-command": (["frobnicate"], 2),
    "infer-no-inputs": (["infer", "-m", B], 2),
    "infer-batch-size-0": (["infer", "-m", B, IMG, "--batch-size", "0"], 2),
    "infer-batch-size-abc": (["infer", "-m", B, IMG, "--batch-size", "abc"], 2),
    "infer-batch-size-negative": (["infer", "-m", B, IMG, "--batch-size", "-1"], 2),
    "infer-batch-size-huge": (["infer", "-m", B, IMG, "--batch-size", "100000"], 2),
    "infer-top-k-0": (["infer", "-m", B, IMG, "--top-k", "0"], 2),
    "infer-precision-bogus": (["infer", "-m", B, IMG, "--precision", "int3"], 2),
    "infer-backend-bogus": (["infer", "-m", B, IMG, "--backend", "cuda"], 2),
    "infer-cuda-graph-on-ort": (["infer", "-m", B, IMG, "--backend", "onnxruntime", "--cuda-graph"], 2),
    "infer-unknown-option": (["infer", "-m", B, IMG, "--fast"], 2),
    "infer-model-missing-dir": (["infer", "-m", "{tmp}/no-such-bundle", IMG], 1),
    "infer-model-unknown-name": (["infer", "-m", "resnet9000", IMG], 1),
    "infer-model-is-image": (["infer", "-m", IMG, IMG], 1),
    "infer-model-empty-dir": (["infer", "-m", "{tmp}/empty", IMG], 1),
    "infer-csv-empty-name": (["infer", "-m", B, IMG, "--csv", ""], 2),
    "infer-empty-path": (["infer", "-m", B, ""], 2),  # '' is not "the current folder"
    "infer-empty-path-beside-a-file": (["infer", "-m", B, IMG, ""], 2),
    "build-batch-size-abc": (["build", "-m", B, "--batch-size", "abc"], 2),
    "build-batch-size-range": (["build", "-m", B, "--batch-size", "8-1"], 2),
    "build-batch-size-0": (["build", "-m", B, "--batch-size", "0"], 2),
    "build-precision-bogus": (["build", "-m", B, "--precision", "int3"], 2),
    "verify-no-data": (["verify", "-m", B], 2),
    "verify-acc-drop-200": (["verify", "-m", B, "--data", "x.csv", "--max-acc-drop", "200"], 2),
    "verify-split-bogus": (["verify", "-m", B, "--data", "x.csv", "--split", "holdout"], 2),
    "verify-artifact-bogus": (["verify", "-m", B, "--data", "{tmp}/m.csv", "--artifact", "onnx_int4"], 2),
    "verify-limit-0": (["verify", "-m", B, "--data", "x.csv", "--limit", "0"], 2),
    "data-check-no-manifest": (["data", "check"], 2),
    "data-check-missing-manifest": (["data", "check", "{tmp}/nope.csv"], 1),
    "data-check-folder-as-manifest": (["data", "check", "{tmp}/empty"], 2),
    "data-bogus-subcommand": (["data", "frob"], 2),
    "calibrate-method-bogus": (["calibrate", "-m", B, "--method", "magic"], 2),
    "bench-batch-size-abc": (["bench", "-m", B, "--batch-size", "abc"], 2),
    "models-add-no-args": (["models", "add"], 2),
    "export-missing-bundle": (["export", "-m", "{tmp}/no-such-bundle"], 1),
}


def _case(name: str) -> Case:
    argv, code = LINES[name]

    def build(folder: Path) -> Plan:
        image = folder / "good.png"
        image.write_bytes(hostile.good_png(11))
        (folder / "empty").mkdir()
        (folder / "m.csv").write_text("relative_path,label,split,patient_id\n")
        subst = {B: str(folder / "bundle"), IMG: str(image)}
        args = [subst.get(a, a.replace("{tmp}", str(folder))) for a in argv]
        return Plan(args=args, exit_code=code, cwd=folder)  # a command that wrongly read '.' reads only this case

    return Case("usage", name, build)


CASES = [_case(n) for n in LINES]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_usage_case(case: Case, case_dir: Path) -> None:
    outcome, detail = run_case(case, case_dir)
    assert outcome == "clean", f"{case}: {outcome}: {detail}"
