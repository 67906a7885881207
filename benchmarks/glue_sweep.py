"""Resumable GLUE sweep: (task, optimizer, seed, lr, rho) runs through `adasam_hf.glue.finetune`.

    python -m benchmarks.glue_sweep --config benchmarks/sweep.yaml

Phase "tune" runs the grid at `tune_seed`. A grid is one stage (a dict of value lists) or a list
of stages: each later stage varies its keys around the best point found so far (e.g. the rho grid at
the chosen lr), which costs a sum of grid sizes instead of a product. Phase "final" repeats, for each
(task, optimizer), the tuned point with the best dev `metric_for_best_model` over all `seeds`,
then each variant (an optimizer at its tuned point with some settings changed) over all `seeds`. A run is
named by the hash of its full configuration: a finished run's JSON under `--results` is found and
skipped, so the sweep can be stopped and continued in pieces, across sessions.
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

DEFAULT_RESULTS = REPO / "docs" / "results" / "runs"


def execute(config: dict, results: Path, data_dir: str | None, scratch: Path) -> dict:
    """Run one configuration (or return its stored result) and store it as JSON."""
    path = result_path(results, config)
    if path.exists():
        return json.loads(path.read_text())
    from adasam_hf.glue import finetune, parse_args

    out = scratch / run_key(config)
    argv = [f"--{k}={v}" for k, v in config.items() if k not in ("extra_args", "variant")]
    argv += [f"--output_dir={out}", "--save_strategy=no", "--load_best_model_at_end=false",
             "--eval_strategy=epoch", "--report_to=none", "--disable_tqdm=true", *config.get("extra_args", [])]
    if data_dir:
        argv.append(f"--data_dir={data_dir}")
    started = time.time()
    result = finetune(*parse_args(argv))
    record = {"key": run_key(config), "config": config, "argv": argv, "wall_s": time.time() - started, "result": result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str))
    shutil.rmtree(out, ignore_errors=True)  # models and checkpoints are not kept; the JSON is
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_flags(parser, REPO / "benchmarks" / "sweep.yaml", DEFAULT_RESULTS, REPO / "runs" / "sweep")
    parser.add_argument("--data_dir", default=None, help="GLUE TSV folder (default: $GLUE_DIR, embedded, Hub)")
    parser.add_argument("--tasks", nargs="*", help="subset of the config's tasks")
    args, extra = parser.parse_known_args(argv)  # extra: passed to every run (e.g. --max_steps 2)

    from adasam_hf.glue import get_task

    sweep = yaml.safe_load(Path(args.config).read_text())
    results, scratch = Path(args.results), Path(args.scratch)
    return run_sweep(sweep, args, extra, args.tasks or sweep["tasks"],
                     lambda task: get_task(task).metric_for_best_model,
                     lambda config: execute(config, results, args.data_dir, scratch))


if __name__ == "__main__":
    sys.exit(main())
