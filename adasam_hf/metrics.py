"""The GLUE metrics under their first name: `adasam_hf.glue.metrics` (``from adasam_hf.metrics import
load_glue_metric`` keeps working)."""

from .glue.metrics import GLUE_METRIC_PATH, build_compute_metrics, compute_glue_metrics, load_glue_metric

__all__ = ["GLUE_METRIC_PATH", "build_compute_metrics", "compute_glue_metrics", "load_glue_metric"]
