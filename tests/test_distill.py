"""Distillation soft labels (stages/train/distill.py): class mapping, ensembling, the file's checks."""

from __future__ import annotations

import numpy as np
import pytest

from edgecxr.core.errors import EdgeCXRError
from edgecxr.data.manifest import CLASSES_3, CLASSES_4
from edgecxr.stages.train import distill

# CLASSES_4 = covid, normal, bacterial, viral; CLASSES_3 = covid, pneumonia, normal
FOUR = np.array([[0.1, 0.2, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1]])
THREE = np.array([[0.2, 0.6, 0.2], [0.5, 0.3, 0.2]])


def test_a_four_class_teacher_gives_pneumonia_as_bacterial_plus_viral():
    got = distill.to_three(FOUR, CLASSES_4)
    assert got == pytest.approx(np.array([[0.1, 0.7, 0.2], [0.7, 0.2, 0.1]]))


def test_three_class_student_averages_both_kinds_of_teacher():
    got = distill.ensemble([(CLASSES_4, FOUR), (CLASSES_3, THREE)], CLASSES_3)
    assert got == pytest.approx((distill.to_three(FOUR, CLASSES_4) + THREE) / 2)
    assert got.sum(axis=1) == pytest.approx([1, 1])


def test_four_class_student_splits_a_three_class_teachers_pneumonia_by_the_four_class_ratio():
    got = distill.ensemble([(CLASSES_4, FOUR), (CLASSES_3, THREE)], CLASSES_4)
    # image 0: 4-class teacher says bacterial:viral = 6:1, so the 3-class pneumonia 0.6 -> 0.514 + 0.086
    expect0 = (FOUR[0] + np.array([0.2, 0.2, 0.6 * 6 / 7, 0.6 / 7])) / 2
    assert got[0] == pytest.approx(expect0)
    with pytest.raises(EdgeCXRError, match="4-class teacher"):
        distill.ensemble([(CLASSES_3, THREE)], CLASSES_4)


def test_soft_targets_follow_the_model_class_order_and_refuse_gaps():
    doc = distill.document({"a.png": [0.1, 0.2, 0.7], "b.png": [1.0, 0.0, 0.0]}, CLASSES_3, [], "m.csv", "train")
    order = ("normal", "covid", "pneumonia")
    got = distill.soft_targets(doc, ["b.png", "a.png"], order)
    assert got == pytest.approx(np.array([[0.0, 1.0, 0.0], [0.7, 0.1, 0.2]]))
    with pytest.raises(EdgeCXRError, match="1 of 2 training images have no soft label"):
        distill.soft_targets(doc, ["a.png", "c.png"], CLASSES_3)
    with pytest.raises(EdgeCXRError, match="not the model's"):
        distill.soft_targets(doc, ["a.png"], CLASSES_4)
    bad = dict(doc, labels={"a.png": [0.5, 0.5, 0.5]})
    with pytest.raises(EdgeCXRError, match="sum to 1"):
        distill.soft_targets(bad, ["a.png"], CLASSES_3)


def test_mix_weights_teacher_and_truth():
    got = distill.mix(np.array([[1.0, 0.0]]), np.array([[0.6, 0.4]]), 0.5)
    assert got == pytest.approx(np.array([[0.8, 0.2]]))
    with pytest.raises(EdgeCXRError):
        distill.mix(np.eye(2), np.eye(2), 1.5)
