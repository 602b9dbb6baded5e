"""The shipped models' calibrators: chosen by cross-validation, loaded, and applied by Classifier.predict.

docs/SAFETY.md section 3 and docs/results/calibration.json (scripts/calibration_report.py) say
which kind each model ships and why; here: the kind recorded is the one the cross-validation
chose, predict's probabilities are that calibrator applied to the model's own output, and the
label is their argmax (a vector fit can move it; out of fold on val + calib that raised accuracy).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgecxr.core.bundle import Bundle
from edgecxr.runtime import store
from edgecxr.runtime.base import PROBABILITIES
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.confidence import Confidence
from edgecxr.runtime.input_checks import InputRules
from edgecxr.runtime.inputs import prepare


@pytest.fixture(autouse=True)
def no_user_models(tmp_path, monkeypatch):
    monkeypatch.setenv(store.ENV_MODELS, str(tmp_path / "models"))


@pytest.mark.parametrize("name", ["coronet", "cnn-lstm"])
def test_the_shipped_calibrator_is_the_cross_validated_choice_and_predict_applies_it(name, examples):
    bundle = Bundle.load(store.REFERENCE_DIR / name)
    section = bundle.meta["confidence"]
    assert "temperature" not in section  # one calibrator, not two that could disagree
    recorded = section["calibrator"]
    assert recorded["chosen_by"] == "cross-validated ECE" and recorded["kind"] == recorded["cv"]["choice"]
    assert recorded["fitted_on"] == ["val", "calib"]
    calibrator = Confidence.from_bundle(bundle).calibrator
    assert calibrator.kind == recorded["kind"]

    files = sorted(p for p in examples.rglob("*.png"))[::4][:6]
    with Classifier.load(name, input_rules=InputRules.off()) as clf:
        preds = clf.predict(files, workers=0)
        x = np.stack([prepare(f, i, clf.spec, InputRules.off())[1] for i, f in enumerate(files)])
        raw = clf.runner.infer_outputs(x)[PROBABILITIES]
        assert calibrator.describe() in clf.backend_info["confidence"] and clf.audit["calibrator"] == calibrator.describe()
    got = np.array([[p.probabilities[c] for c in clf.classes] for p in preds])
    np.testing.assert_allclose(got, calibrator.apply(raw), atol=1e-5)
    if calibrator.kind != "none":
        assert np.abs(got - raw).max() > 1e-3  # really applied
    # the label is the calibrated argmax: a label never disagrees with its own probabilities
    assert [p.label for p in preds] == [clf.classes[k] for k in got.argmax(axis=1)]
    assert [p.top1 for p in preds] == pytest.approx(got.max(axis=1))
