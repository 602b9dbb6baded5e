"""edgecxr.metrics against hand-computed confusion matrices, AUCs and a brute-force reference."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from edgecxr.stages import metrics, metrics_report

C4 = ["covid", "normal", "pneumonia_bacterial", "pneumonia_viral"]

# Hand example (3 classes, 9 images):
#   true  0 0 0 1 1 2 2 2 2
#   pred  0 0 1 1 2 2 2 0 2
# cm = [[2,1,0],[0,1,1],[1,0,3]]
# class 0: tp 2 fp 1 fn 1 tn 5 -> P 2/3 R 2/3 spec 5/6 F1 2/3
# class 1: tp 1 fp 1 fn 1 tn 6 -> P 1/2 R 1/2 spec 6/7 F1 1/2
# class 2: tp 3 fp 1 fn 1 tn 4 -> P 3/4 R 3/4 spec 4/5 F1 3/4
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 2, 2, 2, 0, 2]
CM = [[2, 1, 0], [0, 1, 1], [1, 0, 3]]


def _onehot_probs(pred, n_classes, sharp=0.7):
    """Probabilities whose argmax is `pred` (the rest spread evenly)."""
    pred = np.asarray(pred)
    p = np.full((pred.size, n_classes), (1 - sharp) / (n_classes - 1))
    p[np.arange(pred.size), pred] = sharp
    return p


def _brute_auc(scores, positive):
    """Reference AUC: fraction of (positive, negative) pairs ordered correctly, ties 1/2."""
    pos = scores[positive]
    neg = scores[~positive]
    total = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return total / (pos.size * neg.size)


# -- confusion matrix and per-class ------------------------------------------------------------


def test_confusion_matrix_hand_example():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.dtype == np.int64
    assert cm.tolist() == CM


def test_confusion_matrix_keeps_absent_classes():
    cm = metrics.confusion_matrix([0, 0, 1], [0, 1, 1], 4)
    assert cm.shape == (4, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize(
    "y_true, y_pred, n",
    [([0, 3], [0, 1], 3), ([0, -1], [0, 1], 3), ([0, 1], [0], 3), ([[0, 1]], [[0, 1]], 3), ([0.5], [0], 3)],
)
def test_confusion_matrix_rejects_bad_labels(y_true, y_pred, n):
    with pytest.raises(ValueError):
        metrics.confusion_matrix(y_true, y_pred, n)


def test_per_class_hand_example():
    pc = metrics.per_class(np.array(CM), ["a", "b", "c"])
    expected = {
        "a": (2 / 3, 2 / 3, 5 / 6, 2 / 3, 3),
        "b": (1 / 2, 1 / 2, 6 / 7, 1 / 2, 2),
        "c": (3 / 4, 3 / 4, 4 / 5, 3 / 4, 4),
    }
    for name, (prec, rec, spec, f1, support) in expected.items():
        assert pc[name]["precision"] == pytest.approx(prec)
        assert pc[name]["recall"] == pytest.approx(rec)
        assert pc[name]["specificity"] == pytest.approx(spec)
        assert pc[name]["f1"] == pytest.approx(f1)
        assert pc[name]["support"] == support


def test_per_class_asymmetric_precision_recall():
    # class 0: tp 3, fn 1 (recall 3/4); predicted 0 also for 2 of class 1 (precision 3/5).
    cm = np.array([[3, 1], [2, 4]])
    pc = metrics.per_class(cm, ["x", "y"])
    assert pc["x"]["precision"] == pytest.approx(3 / 5)
    assert pc["x"]["recall"] == pytest.approx(3 / 4)
    assert pc["x"]["specificity"] == pytest.approx(4 / 6)
    assert pc["x"]["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert pc["y"]["precision"] == pytest.approx(4 / 5)
    assert pc["y"]["recall"] == pytest.approx(4 / 6)


def test_per_class_zero_division_is_zero():
    cm = np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0]])  # class 2 never occurs and is never predicted
    pc = metrics.per_class(cm, ["a", "b", "c"])
    assert pc["c"] == {"precision": 0.0, "recall": 0.0, "specificity": 1.0, "f1": 0.0, "support": 0}


def test_per_class_shape_mismatch():
    with pytest.raises(ValueError):
        metrics.per_class(np.eye(3), ["a", "b"])


# -- AUC ---------------------------------------------------------------------------------------


def test_auc_perfect_reversed_ties():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9])
    perfect = np.stack([1 - s, s], axis=1)
    assert metrics.roc_auc_ovr(y, perfect) == pytest.approx(1.0)
    assert metrics.roc_auc_ovr(y, perfect[:, ::-1]) == pytest.approx(0.0)
    assert metrics.roc_auc_ovr(y, np.full((4, 2), 0.5)) == pytest.approx(0.5)


def test_auc_hand_case_with_tie():
    # positives 0.9 0.6 0.4 vs negatives 0.7 0.4 0.2 0.1:
    # 0.9 beats 4; 0.6 beats 3; 0.4 ties 1 and beats 2 -> (4 + 3 + 2.5) / 12
    s = np.array([0.9, 0.6, 0.4, 0.7, 0.4, 0.2, 0.1])
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    probs = np.stack([1 - s, s], axis=1)
    assert metrics.roc_auc_ovr(y, probs) == pytest.approx(9.5 / 12)
    assert metrics.roc_auc_per_class(y, probs) == {0: pytest.approx(9.5 / 12), 1: pytest.approx(9.5 / 12)}


def test_auc_matches_brute_force_multiclass_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 60)
    probs = np.round(rng.random((60, 4)), 1)  # coarse rounding -> many ties
    expected = np.mean([_brute_auc(probs[:, k], y == k) for k in range(4)])
    assert metrics.roc_auc_ovr(y, probs) == pytest.approx(expected, abs=1e-12)


def test_auc_skips_class_without_positives_and_warns():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    with pytest.warns(RuntimeWarning, match=r"\[2\]"):
        auc = metrics.roc_auc_ovr(y, probs)
    per = metrics.roc_auc_per_class(y, probs)
    assert per[2] is None
    assert auc == pytest.approx((per[0] + per[1]) / 2)
    assert per[0] == pytest.approx(1.0)  # class 0 scores 0.8 0.6 vs 0.2 0.5


def test_weighted_auc_equals_auc_of_explicit_resample():
    """The bootstrap's weight trick gives the same AUC as materialising the resample."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 40)
    probs = np.round(rng.random((40, 3)), 2)
    counts = next(metrics._bootstrap_counts(40, 5, seed=11))
    assert counts.shape == (5, 40) and (counts.sum(axis=1) == 40).all()
    for k in range(3):
        got = metrics._weighted_auc(probs[:, k], y == k, counts.astype(float))
        for r in range(5):
            idx = np.repeat(np.arange(40), counts[r])
            assert got[r] == pytest.approx(_brute_auc(probs[idx, k], y[idx] == k), abs=1e-12)


# -- evaluate_predictions ----------------------------------------------------------------------


def test_evaluate_predictions_hand_example_numbers():
    probs = _onehot_probs(Y_PRED, 3)
    r = metrics.evaluate_predictions(Y_TRUE, probs, ["a", "b", "c"], bootstrap=0)
    assert r["n"] == 9
    assert r["confusion_matrix"] == CM
    assert r["accuracy"] == pytest.approx(6 / 9)
    assert r["macro_precision"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert r["macro_recall"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert r["accuracy_ci95"] is None and r["macro_auc_ci95"] is None
    assert "covid_vs_rest" not in r and "non_covid_only" not in r
    json.dumps(r, allow_nan=False)  # plain, finite JSON


def test_covid_vs_rest_counts_and_non_covid_only():
    # 4 classes. true / pred:
    #   covid: c c n      -> tp 2, fn 1
    #   normal: n c n     -> fp 1
    #   bact:  b b v      ; viral: v c b
    y = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    pred = [0, 0, 1, 1, 0, 1, 2, 2, 3, 3, 0, 2]
    probs = _onehot_probs(pred, 4)
    # For the two non-COVID images called COVID, put the runner-up on the true class (normal for
    # image 4, bacterial for image 10): the restricted argmax then gets 4 right and 10 wrong.
    probs[4] = [0.5, 0.3, 0.1, 0.1]
    probs[10] = [0.5, 0.1, 0.3, 0.1]
    r = metrics.evaluate_predictions(y, probs, C4, bootstrap=0)
    cv = r["covid_vs_rest"]
    assert (cv["tp"], cv["fp"], cv["tn"], cv["fn"]) == (2, 2, 7, 1)
    assert cv["sensitivity"] == pytest.approx(2 / 3)
    assert cv["specificity"] == pytest.approx(7 / 9)
    assert cv["precision"] == pytest.approx(2 / 4)
    assert cv["f1"] == pytest.approx(4 / 7)
    nc = r["non_covid_only"]
    assert nc["n"] == 9
    assert nc["classes"] == C4[1:]
    # restricted predictions: n n n | b b v | v b b  -> 6 / 9 correct
    assert nc["confusion_matrix"] == [[3, 0, 0], [0, 2, 1], [0, 2, 1]]
    assert nc["accuracy"] == pytest.approx(6 / 9)
    assert nc["recall"] == {
        "normal": pytest.approx(1.0),
        "pneumonia_bacterial": pytest.approx(2 / 3),
        "pneumonia_viral": pytest.approx(1 / 3),
    }
    assert nc["predicted_positive"] == 2


def test_three_class_has_covid_block_and_normal_vs_pneumonia():
    classes = ["covid", "pneumonia", "normal"]
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 2, 2, 2]
    r = metrics.evaluate_predictions(y, _onehot_probs(pred, 3), classes, bootstrap=0)
    assert (r["covid_vs_rest"]["tp"], r["covid_vs_rest"]["fn"]) == (1, 1)
    assert r["non_covid_only"]["classes"] == ["pneumonia", "normal"]
    assert r["non_covid_only"]["accuracy"] == pytest.approx(3 / 4)


def test_bootstrap_ci_contains_point_and_is_deterministic():
    rng = np.random.default_rng(0)
    n = 130
    y = rng.integers(0, 4, n)
    probs = rng.random((n, 4))
    probs[np.arange(n), y] += 0.6
    probs /= probs.sum(axis=1, keepdims=True)
    a = metrics.evaluate_predictions(y, probs, C4, bootstrap=1000, seed=5)
    b = metrics.evaluate_predictions(y, probs, C4, bootstrap=1000, seed=5)
    c = metrics.evaluate_predictions(y, probs, C4, bootstrap=1000, seed=6)
    for key, ci in (("accuracy", "accuracy_ci95"), ("macro_auc", "macro_auc_ci95")):
        lo, hi = a[ci]
        assert lo < a[key] < hi
        assert hi - lo < 0.3
        assert a[ci] == b[ci]
    assert a["accuracy_ci95"] != c["accuracy_ci95"] or a["macro_auc_ci95"] != c["macro_auc_ci95"]
    cv = a["covid_vs_rest"]
    assert cv["sensitivity_ci95"][0] <= cv["sensitivity"] <= cv["sensitivity_ci95"][1]
    nc = a["non_covid_only"]
    assert nc["accuracy_ci95"][0] <= nc["accuracy"] <= nc["accuracy_ci95"][1]
    # point estimates do not depend on the seed
    assert a["accuracy"] == c["accuracy"] and a["macro_auc"] == c["macro_auc"]


def test_bootstrap_chunking_gives_same_ci_distribution_size(monkeypatch):
    """Chunked resampling (large test sets) still yields `bootstrap` resamples and a valid CI."""
    monkeypatch.setattr(metrics, "_BOOTSTRAP_CHUNK_CELLS", 100)
    chunks = list(metrics._bootstrap_counts(30, 17, seed=1))
    assert sum(c.shape[0] for c in chunks) == 17 and len(chunks) > 1
    y = np.arange(30) % 3
    r = metrics.evaluate_predictions(y, _onehot_probs(y, 3), ["a", "b", "c"], bootstrap=50)
    assert r["accuracy_ci95"] == [1.0, 1.0]
    assert r["macro_auc_ci95"] == [1.0, 1.0]


def test_evaluate_predictions_validates_input():
    with pytest.raises(ValueError, match="columns"):
        metrics.evaluate_predictions([0, 1], np.ones((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="rows"):
        metrics.evaluate_predictions([0, 1, 1], np.ones((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        metrics.evaluate_predictions([0, 1], np.array([[np.nan, 1], [0, 1]]), ["a", "b"])
    with pytest.raises(ValueError, match="no images"):
        metrics.evaluate_predictions([], np.ones((0, 2)), ["a", "b"])


# -- agreement ---------------------------------------------------------------------------------


def test_agreement_known_values():
    a = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    b = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    r = metrics.agreement(a, b)
    assert r["top1_agreement"] == pytest.approx(2 / 3)
    assert r["max_abs_diff"] == pytest.approx(0.2)
    assert r["mean_abs_diff"] == pytest.approx((0.1 + 0.1 + 0.2 + 0.2 + 0 + 0) / 6)
    assert r["n"] == 3


def test_agreement_p99():
    a = np.zeros((101, 1))
    b = (np.arange(101) / 100.0)[:, None]  # |diff| = 0.00, 0.01, ..., 1.00
    r = metrics.agreement(a, b)
    assert r["p99_abs_diff"] == pytest.approx(0.99)
    assert r["mean_abs_diff"] == pytest.approx(0.5)
    assert r["max_abs_diff"] == pytest.approx(1.0)
    assert r["top1_agreement"] == 1.0


def test_agreement_shape_mismatch():
    with pytest.raises(ValueError, match="shapes"):
        metrics.agreement(np.ones((2, 3)), np.ones((3, 3)))


# -- formatting --------------------------------------------------------------------------------


def _result_4class():
    y = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    pred = [0, 0, 1, 1, 0, 1, 2, 2, 3, 3, 0, 2]
    return metrics.evaluate_predictions(y, _onehot_probs(pred, 4), C4, bootstrap=100, seed=0)


def test_format_report_contains_classes_and_numbers():
    r = _result_4class()
    text = metrics_report.format_report(r, "CoroNet test")
    assert text.startswith("CoroNet test (n=12)")
    for c in C4:
        assert c in text
    assert f"accuracy {r['accuracy']:.3f}" in text
    assert "95% CI" in text
    assert "tp 2, fp 2, tn 7, fn 1" in text
    assert "non-COVID only (n=9" in text
    # confusion-matrix row of covid: 2 1 0 0
    row = next(line for line in text.splitlines() if line.startswith("covid") and "0.6" not in line)
    assert row.split()[1:] == ["2", "1", "0", "0"]
