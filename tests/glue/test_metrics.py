"""Tests for adasam_hf.glue.metrics against references computed here, by hand, with plain NumPy, or with sklearn and
SciPy called as evaluate's GLUE metric calls them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef
from transformers import EvalPrediction

from adasam_hf.glue.metrics import build_compute_metrics, compute_glue_metrics
from adasam_hf.glue.tasks import GLUE_TASKS

PREDS = np.array([1, 1, 0, 1, 0, 0, 1, 1, 0, 1])
LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 1])
# Confusion counts of PREDS vs LABELS, counted by hand: tp (1,1) at 0,3,6,9; tn (0,0) at 4,5,8;
# fp (pred 1, label 0) at 1,7; fn (pred 0, label 1) at 2.
TP, TN, FP, FN = 4, 3, 2, 1


def mcc_from_confusion(tp, tn, fp, fn):
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def test_confusion_counts_are_right():
    assert TP == np.sum((PREDS == 1) & (LABELS == 1)) and TN == np.sum((PREDS == 0) & (LABELS == 0))
    assert FP == np.sum((PREDS == 1) & (LABELS == 0)) and FN == np.sum((PREDS == 0) & (LABELS == 1))


@pytest.mark.parametrize("task", ["sst2", "rte", "qnli", "wnli"])
def test_accuracy_tasks(task):
    assert compute_glue_metrics(task, PREDS, LABELS) == {"accuracy": pytest.approx(0.7)}


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_accuracy_and_f1(task):
    result = compute_glue_metrics(task, PREDS, LABELS)
    assert result == {"accuracy": pytest.approx(7 / 10), "f1": pytest.approx(2 * TP / (2 * TP + FP + FN))}


def test_matthews_correlation():
    result = compute_glue_metrics("cola", PREDS, LABELS)
    assert result == {"matthews_correlation": pytest.approx(mcc_from_confusion(TP, TN, FP, FN))}
    # A constant prediction has no correlation; sklearn returns 0 there, as evaluate does.
    assert compute_glue_metrics("cola", np.ones(10, int), LABELS)["matthews_correlation"] == 0.0


def test_mnli_three_classes():
    preds, labels = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]
    assert compute_glue_metrics("mnli", preds, labels) == {"accuracy": pytest.approx(4 / 6)}


def ranks(x):
    return np.argsort(np.argsort(x)).astype(float)  # valid for data without ties


def test_pearson_and_spearman():
    labels = np.array([0.0, 1.2, 2.5, 3.1, 4.8, 5.0])
    preds = np.array([0.3, 0.9, 3.0, 2.7, 4.1, 4.9])
    result = compute_glue_metrics("stsb", preds, labels)
    assert set(result) == {"pearson", "spearmanr"}
    assert result["pearson"] == pytest.approx(np.corrcoef(preds, labels)[0, 1])
    assert result["spearmanr"] == pytest.approx(np.corrcoef(ranks(preds), ranks(labels))[0, 1])
    # One swapped pair of ranks out of six: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 12 / 210.
    assert result["spearmanr"] == pytest.approx(1 - 12 / 210)


def test_every_task_returns_its_metric_names_as_python_floats():
    for task in GLUE_TASKS.values():
        labels = np.linspace(0, 5, 8) if task.is_regression else np.arange(8) % task.num_labels
        preds = labels[::-1].copy()
        result = compute_glue_metrics(task, preds, labels)
        assert tuple(result) == task.metric_names
        assert all(type(v) is float for v in result.values())


def test_bad_inputs():
    with pytest.raises(ValueError, match="shapes"):
        compute_glue_metrics("rte", [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="non-empty"):
        compute_glue_metrics("rte", [], [])
    with pytest.raises(ValueError, match="argmax"):
        compute_glue_metrics("rte", [0.2, 0.9], [0, 1])
    with pytest.raises(ValueError, match="valid tasks"):
        compute_glue_metrics("glue", [0], [0])


def test_compute_metrics_from_classification_logits():
    logits = np.where(PREDS[:, None] == np.arange(2), 2.0, -1.0) + np.random.default_rng(0).normal(0, 0.1, (10, 2))
    fn = build_compute_metrics("mrpc")
    result = fn(EvalPrediction(predictions=logits, label_ids=LABELS))
    assert result == compute_glue_metrics("mrpc", PREDS, LABELS)
    # Extra model outputs (hidden states) come after the logits in a tuple.
    assert fn(EvalPrediction(predictions=(logits, np.zeros((10, 3, 4))), label_ids=LABELS)) == result


def test_compute_metrics_from_regression_outputs():
    labels = np.array([0.0, 1.2, 2.5, 3.1, 4.8, 5.0], dtype=np.float32)
    preds = np.array([[0.3], [0.9], [3.0], [2.7], [4.1], [4.9]], dtype=np.float32)
    result = build_compute_metrics("STS-B")(EvalPrediction(predictions=preds, label_ids=labels))
    assert result["pearson"] == pytest.approx(np.corrcoef(preds[:, 0], labels)[0, 1], rel=1e-6)
    assert result["spearmanr"] == pytest.approx(1 - 12 / 210)


def test_build_compute_metrics_fails_early_on_unknown_task():
    with pytest.raises(ValueError, match="bogus"):
        build_compute_metrics("bogus")


# ------------------------------------------------------------------------- the local `evaluate` GLUE module

# evaluate's GLUE metric (metrics/glue/glue.py): its keys per configuration, and how it computes each.
EVALUATE_GLUE = {
    "cola": {"matthews_correlation": lambda p, y: matthews_corrcoef(y, p)},
    "stsb": {"pearson": lambda p, y: pearsonr(p, y)[0], "spearmanr": lambda p, y: spearmanr(p, y)[0]},
    **{t: {"accuracy": lambda p, y: (p == y).mean(), "f1": lambda p, y: f1_score(y_true=y, y_pred=p)}
       for t in ("mrpc", "qqp")},
    **{t: {"accuracy": lambda p, y: (p == y).mean()}
       for t in ("sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli")},
}


@pytest.mark.parametrize("config", sorted(EVALUATE_GLUE))
def test_load_glue_metric_equals_sklearn_and_scipy(config):
    import evaluate

    from adasam_hf.glue.metrics import load_glue_metric

    rng = np.random.default_rng(sorted(EVALUATE_GLUE).index(config))
    if config == "stsb":  # float32, as the module's features (and evaluate's) declare them
        labels = rng.uniform(0, 5, 50).astype(np.float32)
        preds = (labels + rng.normal(0, 1, 50)).astype(np.float32)
    else:
        k = 3 if config.startswith("mnli") else 2
        labels, preds = rng.integers(0, k, 50), rng.integers(0, k, 50)
    metric = load_glue_metric(config)
    assert isinstance(metric, evaluate.EvaluationModule)
    got = metric.compute(predictions=preds.tolist(), references=labels.tolist())
    p, y = preds.astype(np.float64), labels.astype(np.float64)
    expected = {key: fn(p, y) for key, fn in EVALUATE_GLUE[config].items()}
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key


def test_load_glue_metric_takes_task_spellings_and_batches():
    from adasam_hf.glue.metrics import load_glue_metric

    metric = load_glue_metric("SST-2")
    metric.add_batch(predictions=[1, 0], references=[1, 1])
    metric.add_batch(predictions=[0], references=[0])
    assert metric.compute() == {"accuracy": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="valid tasks: cola, mnli"):
        load_glue_metric("hans")


def test_compute_metrics_of_non_finite_logits_is_nan_so_never_the_best():
    logits = np.zeros((4, 2))
    logits[2, 1] = np.nan  # the argmax would silently call this class 0
    result = build_compute_metrics("mrpc")(EvalPrediction(predictions=logits, label_ids=np.array([0, 0, 0, 1])))
    assert set(result) == {"accuracy", "f1"} and all(np.isnan(v) for v in result.values())
    assert not np.greater(result["f1"], -np.inf)  # how the Trainer compares a metric with the best so far
