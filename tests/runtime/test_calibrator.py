"""The bundle's confidence.calibrator as the runtime reads it: every kind, old bundles, refusals in one line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgecxr.core.errors import BundleError
from edgecxr.runtime.confidence import Calibrator, Confidence, apply_temperature

CLASSES = ["a", "b", "c"]
RAW = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.34, 0.33, 0.33]], dtype=np.float32)


def _bundle(section: dict | None) -> SimpleNamespace:
    meta = {} if section is None else {"confidence": section}
    return SimpleNamespace(meta=meta, path=Path("b/bundle.json"), classes=CLASSES)


def _load(section: dict | None) -> Confidence:
    return Confidence.from_bundle(_bundle(section))


def test_a_bundle_from_before_the_calibrator_still_loads_its_temperature():
    conf = _load({"temperature": {"value": 2.0, "fitted_on": "val"}})
    assert conf.calibrator.kind == "temperature" and conf.temperature == 2.0
    np.testing.assert_allclose(conf.calibrator.apply(RAW), apply_temperature(RAW, 2.0))
    assert _load(None).calibrator.kind == "none" and _load({"temperature": {"value": None}}).temperature is None


@pytest.mark.parametrize("spec", [
    {"kind": "none"},
    {"kind": "temperature", "temperature": 0.7},
    {"kind": "vector", "scale": [1.5, 1.0, 0.5], "bias": [0.2, 0.0, -0.2], "fitted_on": ["val", "calib"]},
    {"kind": "dirichlet", "weights": [[1, 0.1, 0], [0, 1, 0], [0, 0.2, 1]], "bias": [0, 0, 0.1]},
])
def test_each_kind_round_trips_through_bundle_json(spec):
    cal = _load({"calibrator": spec}).calibrator
    assert cal.kind == spec["kind"]
    again = Calibrator.from_section(cal.params(), 3, "x")
    np.testing.assert_allclose(again.apply(RAW), cal.apply(RAW), atol=1e-6)
    np.testing.assert_allclose(np.asarray(cal.apply(RAW)).sum(1), 1, atol=1e-5)


def test_vector_and_dirichlet_compute_softmax_of_the_affine_log_probabilities():
    cal = _load({"calibrator": {"kind": "vector", "scale": [2, 1, 1], "bias": [0, 1, 0]}}).calibrator
    z = np.log(RAW.astype(np.float64)) * [2, 1, 1] + [0, 1, 0]
    np.testing.assert_allclose(cal.apply(RAW), np.exp(z) / np.exp(z).sum(1, keepdims=True), atol=1e-6)
    w = np.array([[1.0, 0.5, 0], [0, 1, 0], [0.3, 0, 2]])
    cal = _load({"calibrator": {"kind": "dirichlet", "weights": w.tolist(), "bias": [0.1, 0, 0]}}).calibrator
    z = np.log(RAW.astype(np.float64)) @ w.T + [0.1, 0, 0]
    np.testing.assert_allclose(cal.apply(RAW), np.exp(z) / np.exp(z).sum(1, keepdims=True), atol=1e-6)


def test_the_label_follows_the_calibrated_probabilities(tiny_bundle, images):
    """A vector calibrator that moves every row to the last class moves the label with it: a label
    never disagrees with its own probabilities (stages/confidence/calibrate.py says why)."""
    from edgecxr.runtime.classifier import Classifier
    from edgecxr.runtime.input_checks import InputRules

    classes = tiny_bundle.classes
    bias = [0.0] * (len(classes) - 1) + [20.0]
    section = dict(tiny_bundle.meta.get("confidence") or {})
    section.pop("temperature", None)
    tiny_bundle.update(confidence={**section, "calibrator": {"kind": "vector", "scale": [1.0] * len(classes),
                                                             "bias": bias}})
    with Classifier.load(tiny_bundle.dir, input_rules=InputRules.off()) as clf:
        preds = clf.predict(images[:3], workers=0)
    for p in preds:
        assert p.label == classes[-1] and p.top1 == pytest.approx(max(p.probabilities.values()))


@pytest.mark.parametrize(("spec", "message"), [
    ("dirichlet", "must be a table"),
    ({"kind": "platt"}, "unknown calibrator kind 'platt'"),
    ({"kind": "temperature"}, "temperature None is not a number"),
    ({"kind": "temperature", "temperature": 0}, "temperature 0 is not a number in"),
    ({"kind": "temperature", "temperature": True}, "temperature True is not a number"),
    ({"kind": "vector", "bias": [0, 0, 0]}, "vector calibrator scale: expected a list of numbers"),
    ({"kind": "vector", "scale": [1, 1], "bias": [0, 0, 0]}, "scale has shape (2,), expected (3,)"),
    ({"kind": "vector", "scale": [1, 1, 1, 1], "bias": [0, 0, 0, 0]}, "expected (3,)"),
    ({"kind": "vector", "scale": [1, 100, 1], "bias": [0, 0, 0]}, "scale outside"),
    ({"kind": "vector", "scale": [1, 1, float("nan")], "bias": [0, 0, 0]}, "finite numbers"),
    ({"kind": "vector", "scale": "1 1 1", "bias": [0, 0, 0]}, "expected a list of numbers"),
    ({"kind": "dirichlet", "weights": [[1, 0, 0], [0, 1, 0]], "bias": [0, 0, 0]}, "weights has shape (2, 3)"),
    ({"kind": "dirichlet", "weights": [[1, 0, 0], [0, 1], [0, 0, 1]], "bias": [0, 0, 0]}, "expected a list of numbers"),
])
def test_a_malformed_calibrator_is_refused_in_one_line(spec, message):
    with pytest.raises(BundleError) as err:
        _load({"calibrator": spec})
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith("b/bundle.json (confidence)")


def test_both_the_calibrator_and_the_old_temperature_is_ambiguous():
    with pytest.raises(BundleError, match="both 'calibrator' and the older 'temperature'"):
        _load({"calibrator": {"kind": "none"}, "temperature": {"value": 1.2}})
    with pytest.raises(BundleError, match="temperature must be a table"):
        _load({"temperature": 1.2})


def test_the_table_footer_names_a_calibrator_that_is_not_a_temperature():
    from edgecxr.runtime.results import audit_footer

    assert "| vector calibrator |" in audit_footer({"calibrator": "vector calibrator", "temperature": None})
    assert "| temperature 0.700 |" in audit_footer({"calibrator": "temperature 0.700", "temperature": 0.7})
    assert "| temperature none |" in audit_footer({"temperature": None})  # an older audit
