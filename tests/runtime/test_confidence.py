"""Temperature and OOD abstention applied by the Classifier, on a tiny real ONNX bundle.

The tiny model's features are its flattened input (tinymodels: flatten -> dense -> softmax), so
a Mahalanobis fit on real X-rays is known to call noise far away; the test checks the whole path:
the 'features' output added to the graph, the fit read from the bundle (sha256 checked), the
calibrated probabilities, the "abstained" status, and the audit trail.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgecxr.core.errors import BundleError
from edgecxr.core.fileutil import sha256_file
from edgecxr.core.spec import preprocess
from edgecxr.data.io import load_image
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.confidence import FILE, SECTION, apply_temperature, save_arrays
from edgecxr.runtime.input_checks import InputRules
from edgecxr.stages.confidence.fit import fit_mahalanobis
from edgecxr.stages.confidence.run import ensure_features
from runtime import tinymodels

T = 2.5


def _fitted_bundle(tmp_path, images):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    x = np.stack([preprocess(load_image(p), tinymodels.SPEC) for p in images])
    done = ensure_features(bundle, x[:2])
    assert set(done) == {"onnx_fp32", "onnx_fp16"}  # both gained the output, probabilities unchanged
    feats = x.reshape(len(x), -1)
    score = fit_mahalanobis(feats, np.arange(len(x)) % 4, 4, shrinkage=0.5)
    inside = score.score(None, feats)
    (bundle.dir / FILE).write_bytes(save_arrays(score.arrays()))
    threshold = float(inside.max() * 1.5)
    bundle.update(**{SECTION: {"temperature": {"value": T},
                               "ood": {"method": "mahalanobis", "file": FILE, "sha256": sha256_file(bundle.dir / FILE),
                                       "thresholds": {"fp32": threshold, "fp16": threshold}}}})
    return bundle, x, threshold


@pytest.fixture
def images():
    found = tinymodels.real_images(8)
    if len(found) < 4:
        pytest.skip("no real X-rays here")
    return found


def test_xrays_pass_noise_abstains_probabilities_calibrated(tmp_path, images):
    bundle, x, threshold = _fitted_bundle(tmp_path, images)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    with Classifier.load(bundle.dir, precision="fp32", input_rules=InputRules.off()) as clf:
        preds = clf.predict([*images, noise])
        audit = clf.audit
    *xrays, far = preds
    assert all(p.status == "ok" and p.ood_score is not None and p.ood_score <= threshold for p in xrays)
    assert far.status == "abstained" and "OOD score" in far.reason and far.ood_score > threshold
    assert far.label is not None  # kept for inspection, not for use
    expected = apply_temperature(tinymodels.reference_probs(x), T)
    got = np.array([[p.probabilities[c] for c in tinymodels.CLASSES] for p in xrays])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, tinymodels.reference_probs(x), atol=1e-3)  # T really applied
    assert audit["temperature"] == T and audit["ood_threshold"] == pytest.approx(threshold)
    assert audit["ood_method"] == "mahalanobis"


def test_a_replaced_fit_file_is_refused(tmp_path, images):
    bundle, _, _ = _fitted_bundle(tmp_path, images)
    data = np.load(bundle.dir / FILE)
    arrays = {k: data[k] for k in data.files}
    arrays["means"] = arrays["means"] * 0
    (bundle.dir / FILE).write_bytes(save_arrays(arrays))
    with pytest.raises(BundleError, match="sha256"):
        Classifier.load(bundle.dir, precision="fp32")


def test_a_model_without_features_says_ood_is_not_applied(tmp_path, images):
    bundle, _, _ = _fitted_bundle(tmp_path, images)
    tinymodels.make_onnx(bundle.default_path("onnx_fp32"))  # the old file: probabilities only
    bundle.set_artifact("onnx_fp32", bundle.default_path("onnx_fp32"))
    bundle.save()
    with Classifier.load(bundle.dir, precision="fp32", input_rules=InputRules.off()) as clf:
        assert clf.backend_info["warning"].startswith("OOD not applied")
        pred = clf.predict(images[:1])[0]
    assert pred.status == "ok" and pred.ood_score is None


def test_unknown_method_or_bad_temperature_is_a_bundle_error(tmp_path, images):
    bundle, _, _ = _fitted_bundle(tmp_path, images)
    for section in ({"temperature": {"value": -1}}, {"ood": {"method": "vibes", "thresholds": {"fp32": 1}}},
                    {"ood": {"method": "msp", "thresholds": {"fp32": float("nan")}}}):
        bundle.update(**{SECTION: section})
        with pytest.raises(BundleError):
            Classifier.load(bundle.dir, precision="fp32")
