"""GLUE metrics for the HF Trainer, computed with scikit-learn and SciPy, and as an offline `evaluate` module.

Key names and definitions follow ``evaluate``'s GLUE metric, so numbers compare directly with run_glue and
published tables. ``evaluate.load("glue", ...)`` needs the Hub; `load_glue_metric` loads the same metric from a
local module shipped in the package (``evaluate_modules/glue``), which calls `compute_glue_metrics`. Which metrics
a task reports is read from ``tasks.GLUE_TASKS``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .tasks import GlueTask, get_task

__all__ = ["GLUE_METRIC_PATH", "build_compute_metrics", "compute_glue_metrics", "load_glue_metric",
           "predictions_from_logits"]

# The local `evaluate` module: a folder holding a script of the same name, as evaluate's own metrics are laid out.
GLUE_METRIC_PATH = Path(__file__).resolve().parent / "evaluate_modules" / "glue"

# name -> fn(predictions, labels); F1 is binary with class 1 positive (equivalent / duplicate), as in evaluate.
_METRIC_FNS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, y: accuracy_score(y, p),
    "f1": lambda p, y: f1_score(y, p),
    "matthews_correlation": lambda p, y: matthews_corrcoef(y, p),
    "pearson": lambda p, y: pearsonr(p, y)[0],
    "spearmanr": lambda p, y: spearmanr(p, y)[0],
}


def compute_glue_metrics(task: str | GlueTask, predictions, labels) -> dict[str, float]:
    """Score predictions (class ids, or floats for stsb) against labels with the task's GLUE metrics.

    Returns plain Python floats so the result logs and serializes as JSON without NumPy types.
    """
    task = get_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if not task.is_regression and not np.array_equal(predictions, np.round(predictions)):
        # Guards against passing logits or probabilities, which a cast to int would silently truncate.
        raise ValueError(f"{task.name} predictions must be class ids; take the argmax of the logits first")
    dtype = np.float64 if task.is_regression else np.int64
    predictions, labels = predictions.astype(dtype, copy=False), labels.astype(dtype, copy=False)
    if predictions.ndim != 1 or predictions.shape != labels.shape or predictions.size == 0:
        raise ValueError(
            f"predictions and labels must be non-empty 1-D arrays of equal length, "
            f"got shapes {predictions.shape} and {labels.shape}"
        )
    return {name: float(_METRIC_FNS[name](predictions, labels)) for name in task.metric_names}


def build_compute_metrics(task: str | GlueTask) -> Callable[..., dict[str, float]]:
    """Return a ``compute_metrics`` for ``Trainer``: logits -> predictions -> ``compute_glue_metrics``.

    The task is resolved now, so a bad name fails when the Trainer is built, not after the first evaluation.
    """
    task = get_task(task)

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        if not np.isfinite(np.asarray(logits, dtype=np.float64)).all():
            # The argmax of NaN logits is a made-up class: report NaN, so such a checkpoint is never the best one.
            return {name: float("nan") for name in task.metric_names}
        return compute_glue_metrics(task, predictions_from_logits(task, eval_pred.predictions), eval_pred.label_ids)

    return compute_metrics


def predictions_from_logits(task: str | GlueTask, logits) -> np.ndarray:
    """Model outputs -> what the metrics score: class ids (argmax), or the scores for the regression task."""
    task = get_task(task)
    # Models asked for hidden states or attentions return a tuple; the logits come first.
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = np.asarray(logits)
    if task.is_regression:
        return logits.squeeze(-1) if logits.ndim == 2 and logits.shape[-1] == 1 else logits
    return logits.argmax(axis=-1)


def load_glue_metric(task: str | GlueTask, **kwargs):
    """evaluate's GLUE metric for `task`, offline: an `evaluate.EvaluationModule` whose
    ``compute(predictions=..., references=...)`` returns the keys and values of ``evaluate.load("glue", task)``.

    `task` is a GLUE task (any spelling `get_task` takes) or evaluate's ``mnli_matched`` / ``mnli_mismatched``.
    `kwargs` go to `evaluate.load` (``process_id``, ``num_process``, ``experiment_id`` for distributed use); the
    predictions are kept in memory unless ``keep_in_memory=False`` is passed.

    Raises:
        ValueError: `task` is not a GLUE task.
    """
    import evaluate

    name = task if task in ("mnli_matched", "mnli_mismatched") else get_task(task).name
    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(GLUE_METRIC_PATH), name, **kwargs)
