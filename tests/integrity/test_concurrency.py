"""Campaign family "concurrency": two commands on one bundle at once lose no record.

Real processes (the `edgecxr` console script), because a lost update needs two of them. Each
case takes a few seconds; there are only a few.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from integrity.campaign import Case, Plan, run_case
from integrity.test_manifests import _manifest

EDGECXR = [str(Path(sys.executable).parent / "edgecxr")]


def _verify(folder: Path, manifest: Path, artifact: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    args = [*EDGECXR, "verify", "-m", str(folder / "bundle"), "--data", str(manifest), "--split", "val",
            "--artifact", artifact, "--reference", "onnx_fp32", "--max-acc-drop", "100", "--min-agreement", "0",
            "--no-covid-sensitivity-not-lower"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _two_verifies(folder: Path) -> Plan:
    manifest = _manifest(folder)
    bundle = folder / "bundle"

    def call() -> str | None:
        a = _verify(folder, manifest, "onnx_fp16")
        b = _verify(folder, manifest, "onnx_int8")
        outs = [(p.wait(120), p.stderr.read()) for p in (a, b)]
        if any(code != 0 for code, _ in outs):
            return f"exit codes {[c for c, _ in outs]}: {outs[0][1][-200:]} {outs[1][1][-200:]}"
        gate = json.loads((bundle / "bundle.json").read_text()).get("gate", {})
        missing = [k for k in ("onnx_fp16", "onnx_int8") if k not in gate]
        return f"bundle.json lost the verdict of {missing}" if missing else None

    return Plan(call=call, writes=(bundle / "bundle.json", bundle / "verify.json", bundle / "verify.md"))


def _holder(bundle: Path, seconds: float) -> subprocess.Popen:
    code = ("import sys, time; from edgecxr.core.lock import bundle_lock\n"
            f"with bundle_lock({str(bundle)!r}):\n    print('held', flush=True); time.sleep({seconds})\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _locked_gives_up(folder: Path) -> Plan:
    manifest = _manifest(folder)
    bundle = folder / "bundle"

    def call() -> str | None:
        holder = _holder(bundle, 60)
        try:
            p = _verify(folder, manifest, "onnx_fp16", {"EDGECXR_LOCK_TIMEOUT": "0.5"})
            code, err = p.wait(50), p.stderr.read()
            gave_up = holder.poll() is None  # the holder still holds it: verify did not wait it out
        finally:
            holder.kill()
            holder.wait()
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        if code != 1 or len(errors) != 1 or "pid" not in errors[0]:
            return f"exit {code}, stderr {err[-300:]!r}"
        return None if gave_up else "it waited for the holder instead of giving up"

    return Plan(call=call)


def _locked_waits(folder: Path) -> Plan:
    manifest = _manifest(folder)
    bundle = folder / "bundle"

    def call() -> str | None:
        holder = _holder(bundle, 2)
        p = _verify(folder, manifest, "onnx_fp16", {"EDGECXR_LOCK_TIMEOUT": "60"})
        code, err = p.wait(90), p.stderr.read()
        holder.wait(30)
        if code != 0 or "waiting for the lock" not in err:
            return f"exit {code}, stderr {err[-300:]!r}"
        gate = json.loads((bundle / "bundle.json").read_text()).get("gate", {})
        return None if "onnx_fp16" in gate else "verdict not recorded"

    return Plan(call=call, writes=(bundle / "bundle.json", bundle / "verify.json", bundle / "verify.md"))


CASES = [
    Case("concurrency", "two-verifies-keep-both-verdicts", _two_verifies),
    Case("concurrency", "locked-bundle-gives-up-with-the-holder-named", _locked_gives_up),
    Case("concurrency", "locked-bundle-waits-then-records", _locked_waits),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_concurrency_case(case: Case, case_dir: Path) -> None:
    outcome, detail = run_case(case, case_dir)
    assert outcome == "clean", f"{case}: {outcome}: {detail}"
