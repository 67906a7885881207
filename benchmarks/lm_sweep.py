"""Resumable LLM fine-tuning experiment: (optimizer, seed, lr, rho) runs through `adasam_hf.lm.finetune_lm`.

    python -m benchmarks.lm_sweep --config benchmarks/lm_sweep.yaml

The plan of the GLUE sweep (`benchmarks.sweep_plan`: staged grids at `tune_seed`, then the tuned point over
`seeds`, then the variants), for one instruction mix named by `experiment`. Tuning selects on the `eval_loss` of
records held out from the *train* splits (`validation_split_percentage`), never on a benchmark; the final runs
also score the fine-tuned model on the `final_eval` benchmarks (lm-eval, the packaged tasks). A run is named by
the hash of its configuration; its JSON under `--results` is found and skipped, so the experiment continues across
sessions. The zero-shot baseline is measured once, by `scripts/evaluate_lm.py` (docs/results/lm_zero_shot_*).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from benchmarks.harness import REPO
from benchmarks.sweep_plan import add_sweep_flags, result_path, run_key, run_sweep

DEFAULT_RESULTS = REPO / "docs" / "results" / "lm_runs"
METRIC = "loss"  # the held-out eval_loss, minimised


def final_settings(sweep: dict) -> dict:
    """What a final run adds to its configuration (and hash): the benchmark flags of `final_eval`."""
    return {f"eval_{k}": v for k, v in sweep.get("final_eval", {}).items()}


def execute(config: dict, results: Path, scratch: Path) -> dict:
    """Run one configuration (or return its stored result) and store it as JSON (the model is not kept)."""
    path = result_path(results, config)
    if path.exists():
        return json.loads(path.read_text())
    from adasam_hf.lm import finetune_lm, parse_args

    out = scratch / run_key(config)
    argv = [f"--{k}={v}" for k, v in config.items() if k not in ("extra_args", "variant", "task")]
    argv += [f"--output_dir={out}", "--overwrite_output_dir=true", "--save_strategy=no", "--eval_strategy=no",
             "--report_to=none", "--disable_tqdm=true", *config.get("extra_args", [])]
    started = time.time()
    result = finetune_lm(*parse_args(argv))
    record = {"key": run_key(config), "config": config, "argv": argv, "wall_s": time.time() - started, "result": result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str))
    shutil.rmtree(out, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_flags(parser, REPO / "benchmarks" / "lm_sweep.yaml", DEFAULT_RESULTS, REPO / "runs" / "lm_sweep")
    args, extra = parser.parse_known_args(argv)  # extra: passed to every run (e.g. --max_steps 2)
    sweep = yaml.safe_load(Path(args.config).read_text())
    results, scratch = Path(args.results), Path(args.scratch)
    return run_sweep(sweep, args, extra, [sweep["experiment"]], lambda task: METRIC,
                     lambda config: execute(config, results, scratch), final_settings(sweep), name="lm_sweep")


if __name__ == "__main__":
    sys.exit(main())
