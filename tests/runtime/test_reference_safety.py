"""The shipped models refuse what is not a frontal chest X-ray, and answer the real ones.

Issue "honest answers": noise, blank, text, photo, CT/MR/US DICOM and lateral-view inputs come back
`rejected` (input checks) or `abstained` (the model's OOD score), and 2% or fewer of the `test`
images do. docs/SAFETY.md gives the measured rates per kind (scripts/safety_report.py).
"""

from __future__ import annotations

from collections import Counter

import pytest
from integrity import hostile

from edgecxr.data.io import load_image
from edgecxr.data.manifest import read_manifest, select
from edgecxr.runtime import store
from edgecxr.runtime.classifier import Classifier
from edgecxr.stages.confidence import ood_set

#: kinds of the built-in OOD set that must all be caught (by the input checks or the OOD score)
ALWAYS_CAUGHT = ("ct", "mr", "us", "nm", "noise", "blank", "text")


@pytest.fixture(autouse=True)
def no_user_models(tmp_path, monkeypatch):
    monkeypatch.setenv(store.ENV_MODELS, str(tmp_path / "models"))


@pytest.fixture(scope="module")
def items():
    return ood_set.build(per_kind=8)


@pytest.mark.parametrize("name", ["coronet", "cnn-lstm"])
def test_non_xrays_are_rejected_or_abstained(name, items, examples, tmp_path):
    lateral = tmp_path / "lateral.dcm"
    xray = load_image(sorted((examples / "normal").glob("*.png"))[0])
    lateral.write_bytes(hostile.dicom_bytes(xray, ViewPosition="LL"))
    inputs = [it.path if it.path is not None else it.image for it in items] + [lateral]
    with Classifier.load(name) as clf:
        assert "OOD mahalanobis" in clf.backend_info["confidence"]  # the fit shipped and is applied
        preds = clf.predict(inputs)
    by_kind: dict[str, Counter] = {}
    for it, p in zip(items, preds, strict=False):
        by_kind.setdefault(it.kind, Counter())[p.status] += 1
    for kind in ALWAYS_CAUGHT:
        assert by_kind[kind]["ok"] == 0, (kind, by_kind[kind])
    photos = [p for it, p in zip(items, preds, strict=False) if it.kind == "photo"]
    assert all(p.status == "rejected" for p in photos[0:6:2])  # the color ones (and the 4:1 logo)
    # gray photographs: the CoroNet answers the portrait and its crops (docs/SAFETY.md), the CNN-LSTM abstains
    assert sum(p.status != "ok" for p in photos) >= 4, Counter(p.status for p in photos)
    assert preds[-1].status == "rejected" and "lateral view (ViewPosition LL)" in preds[-1].reason
    for p in preds:
        if p.status == "rejected":  # never reached the model
            assert p.label is None and p.probabilities == {} and p.ood_score is None and p.reason
        elif p.status == "abstained":  # the model ran; its label is kept for inspection only
            assert p.ood_score > clf.audit["ood_threshold"] and "OOD score" in p.reason


@pytest.mark.parametrize("name", ["coronet", pytest.param("cnn-lstm", marks=pytest.mark.slow)])
def test_at_most_two_percent_of_test_images_go_unanswered(name, shared_cxr):
    records = select(read_manifest(shared_cxr / "manifest.csv"), "test")
    with Classifier.load(name) as clf:
        preds = clf.predict([r.path for r in records])
    status = Counter(p.status for p in preds)
    assert status["ok"] + status["rejected"] + status["abstained"] == len(records) == 126
    assert status["rejected"] == 0  # the input checks never refuse a real chest X-ray
    assert (len(records) - status["ok"]) / len(records) <= 0.02, status
