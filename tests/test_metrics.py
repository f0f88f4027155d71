"""tftune.evaluation.metrics against numbers worked out by hand on small fixed examples."""

from __future__ import annotations

import numpy as np
import pytest

from tftune.evaluation.metrics import classification_report, confusion_matrix, roc_auc, top_k_accuracy


def one_hot_probs(pred, num_classes, confidence=0.8):
    """Probabilities whose argmax is `pred`: `confidence` there, the rest spread evenly."""
    probs = np.full((len(pred), num_classes), (1 - confidence) / (num_classes - 1))
    probs[np.arange(len(pred)), pred] = confidence
    return probs


# 3 classes, 10 examples. Confusion (rows true, columns predicted):
#   [[3, 1, 0],
#    [0, 2, 1],
#    [2, 0, 1]]
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 1, 2, 2, 0, 0]


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(np.array(Y_TRUE), np.array(Y_PRED), 3)
    assert cm.tolist() == [[3, 1, 0], [0, 2, 1], [2, 0, 1]]


def test_report_on_a_fixed_confusion():
    report = classification_report(Y_TRUE, one_hot_probs(Y_PRED, 3), ["a", "b", "c"])
    assert report["examples"] == 10
    assert report["accuracy"] == pytest.approx(0.6)
    # precision = diagonal / column sum (5, 3, 2); recall = diagonal / row sum (4, 3, 3)
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], b["precision"], c["precision"]) == pytest.approx((3 / 5, 2 / 3, 1 / 2))
    assert (a["recall"], b["recall"], c["recall"]) == pytest.approx((3 / 4, 2 / 3, 1 / 3))
    assert (a["f1"], b["f1"], c["f1"]) == pytest.approx((2 / 3, 2 / 3, 0.4))
    assert [a["support"], b["support"], c["support"]] == [4, 3, 3]
    assert report["macro_avg"]["precision"] == pytest.approx((0.6 + 2 / 3 + 0.5) / 3)
    assert report["macro_avg"]["recall"] == pytest.approx((0.75 + 2 / 3 + 1 / 3) / 3)
    assert report["macro_avg"]["f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.4) / 3)
    assert report["weighted_avg"]["precision"] == pytest.approx(0.59)
    assert report["weighted_avg"]["recall"] == pytest.approx(0.6)  # = accuracy
    assert report["weighted_avg"]["f1"] == pytest.approx((4 * 2 / 3 + 3 * 2 / 3 + 3 * 0.4) / 10)
    assert report["log_loss"] == pytest.approx(-(6 * np.log(0.8) + 4 * np.log(0.1)) / 10)
    assert "top_k_accuracy" not in report  # only for more than 5 classes
    assert report["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [2, 0, 1]]


def test_roc_auc_by_hand():
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 pairs are ordered.
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # A tie between a positive and a negative counts one half: (0.5 + 1 + 1 + 1) / 4.
    assert roc_auc(np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1])) == pytest.approx(0.875)
    assert roc_auc(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0
    assert roc_auc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0
    assert roc_auc(np.array([0.3, 0.6]), np.array([1, 1])) is None  # no negatives


def test_binary_auc_is_the_second_class_and_one_vs_rest_is_symmetric():
    y = [0, 0, 1, 1]
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    report = classification_report(y, np.stack([1 - p1, p1], axis=1), ["neg", "pos"])
    assert report["roc_auc"] == pytest.approx(0.75)
    assert report["per_class"]["pos"]["roc_auc"] == pytest.approx(0.75)
    assert report["per_class"]["neg"]["roc_auc"] == pytest.approx(0.75)
    assert "'pos' positive" in report["roc_auc_kind"]


def test_multiclass_auc_is_the_macro_average_of_one_vs_rest():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.1, 0.6, 0.3]])
    y = [0, 1, 2, 2]
    report = classification_report(y, probs, ["a", "b", "c"])
    # a: positive 0.7 above all negatives -> 1. b: positive 0.5 vs negatives 0.2, 0.3, 0.6 -> 2/3.
    # c: positives 0.4, 0.3 vs negatives 0.1, 0.3: 0.4 beats both, 0.3 beats 0.1 and ties 0.3 -> 3.5/4.
    assert report["per_class"]["a"]["roc_auc"] == pytest.approx(1.0)
    assert report["per_class"]["b"]["roc_auc"] == pytest.approx(2 / 3)
    assert report["per_class"]["c"]["roc_auc"] == pytest.approx(3.5 / 4)
    assert report["roc_auc"] == pytest.approx((1 + 2 / 3 + 3.5 / 4) / 3)


def test_top_k_for_more_than_five_classes():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=50)
    y = rng.integers(0, 7, 50)
    ranks = [int(np.sum(probs[i] > probs[i, y[i]])) for i in range(50)]  # 0 = top-1
    report = classification_report(y, probs, [f"c{i}" for i in range(7)])
    assert report["top_k_accuracy"]["3"] == pytest.approx(np.mean(np.array(ranks) < 3))
    assert report["top_k_accuracy"]["5"] == pytest.approx(np.mean(np.array(ranks) < 5))
    assert report["accuracy"] == pytest.approx(np.mean(np.array(ranks) == 0))
    assert top_k_accuracy(y, probs, 7) == 1.0


def test_a_class_absent_from_labels_and_predictions_is_left_out_of_macro_averages():
    report = classification_report([0, 1, 1], one_hot_probs([0, 1, 0], 3), ["a", "b", "unseen"])
    unseen = report["per_class"]["unseen"]
    assert (unseen["precision"], unseen["recall"], unseen["f1"], unseen["support"]) == (0.0, 0.0, 0.0, 0)
    assert unseen["roc_auc"] is None
    a_f1, b_f1 = 2 * 0.5 * 1 / 1.5, 2 * 1 * 0.5 / 1.5
    assert report["macro_avg"]["f1"] == pytest.approx((a_f1 + b_f1) / 2)
