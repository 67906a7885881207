"""The GLUE metric as a local `evaluate` module: ``evaluate.load(<this folder>, "rte")``, offline.

``evaluate.load("glue", ...)`` fetches its script from the Hub. This one has the same configurations, input
features, keys and values as that script (``metrics/glue/glue.py`` of huggingface/evaluate), and computes them with
`adasam_hf.glue.metrics.compute_glue_metrics` (scikit-learn and SciPy), so the math lives in one place. The usual way in
is `adasam_hf.metrics.load_glue_metric(task)`.
"""

import datasets
import evaluate

from adasam_hf.glue.tasks import GLUE_TASKS
from adasam_hf.glue.metrics import compute_glue_metrics

# evaluate's configuration names -> the task whose metrics they are (MNLI's two dev sets have their own names).
CONFIGS = {**{name: name for name in GLUE_TASKS}, "mnli_matched": "mnli", "mnli_mismatched": "mnli"}

_CITATION = """\\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  note={In the Proceedings of ICLR.},
  year={2019}
}
"""

_DESCRIPTION = "The metric of each GLUE task (https://gluebenchmark.com/), as evaluate's `glue` metric reports it."

_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (the argmax of the logits), or scores for stsb.
    references: gold class ids, or gold scores for stsb.
Returns, by configuration:
    "accuracy" (sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli), "accuracy" and "f1" (mrpc, qqp),
    "matthews_correlation" (cola), "pearson" and "spearmanr" (stsb).
"""


class Glue(evaluate.Metric):
    def _info(self):
        if self.config_name not in CONFIGS:
            raise KeyError(f"unknown GLUE configuration {self.config_name!r}; choose from: {', '.join(CONFIGS)}")
        dtype = "float32" if GLUE_TASKS[CONFIGS[self.config_name]].is_regression else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            format="numpy",
        )

    def _compute(self, predictions, references):
        return compute_glue_metrics(CONFIGS[self.config_name], predictions, references)
