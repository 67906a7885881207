"""A run's ``results.json``: its figures, the machine it ran on, and every setting."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch

__all__ = ["RESULTS_FILE", "peak_rss_mb", "resources", "software_versions", "write_results"]

RESULTS_FILE = "results.json"


def write_results(trainer, results: dict, *argument_sets) -> dict:
    """`results` with the Trainer's ``log_history`` (the curves), `resources` and every setting of
    `argument_sets` (dataclasses, the TrainingArguments last) under ``hyperparameters``, made JSON-safe (enums,
    paths, numpy scalars as text), and written to ``<output_dir>/results.json`` by the main process."""
    results = {**results, **resources(trainer), "log_history": trainer.state.log_history}
    results["hyperparameters"] = {
        k: v for args in argument_sets
        for k, v in (args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)).items()
    }
    results = json.loads(json.dumps(results, default=str))
    if trainer.is_world_process_zero():
        (Path(trainer.args.output_dir) / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def resources(trainer) -> dict:
    """Peak memory (the largest over processes), device and versions."""
    args = trainer.args
    peak_rss = torch.tensor([peak_rss_mb()], dtype=torch.float64, device=args.device)
    peak_rss = trainer.accelerator.gather(peak_rss).max().item()
    cuda = args.device.type == "cuda"
    return {
        "peak_rss_mb": round(peak_rss, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated(args.device) / 2**20, 1) if cuda else None,
        "device": str(args.device),
        "device_name": torch.cuda.get_device_name(args.device) if cuda else platform.processor() or platform.machine(),
        "world_size": args.world_size,
        "versions": software_versions(),
    }


def software_versions() -> dict:
    import accelerate
    import datasets
    import transformers

    from .. import __version__

    return {
        "python": platform.python_version(),
        "adasam_hf": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        **{name: _installed(name) for name in ("peft", "lm_eval")},
    }


def _installed(distribution: str) -> str | None:
    """A package's version without importing it (None if absent)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MiB."""
    try:
        import resource
    except ImportError:  # Windows: current, not peak
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
