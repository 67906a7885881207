"""Resumable LLM fine-tuning experiment: (optimizer, seed, lr, rho) runs through `adasam_hf.lm.finetune_lm`.

    python -m benchmarks.lm_sweep --config benchmarks/lm_sweep.yaml

The same plan as the GLUE sweep (`benchmarks.glue_sweep`: staged grids at `tune_seed`, then the tuned point over
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

from benchmarks.glue_sweep import final_configs, load_results, result_path, run_config, run_key, tuning_plan
from benchmarks.harness import REPO

DEFAULT_RESULTS = REPO / "docs" / "results" / "lm_runs"
METRIC = "loss"  # the held-out eval_loss, minimised


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
    parser.add_argument("--config", default=str(REPO / "benchmarks" / "lm_sweep.yaml"))
    parser.add_argument("--results", default=str(DEFAULT_RESULTS), help="folder of per-run JSON files")
    parser.add_argument("--phase", choices=["tune", "final", "all"], default="all")
    parser.add_argument("--optimizers", nargs="*", help="subset of the config's optimizers")
    parser.add_argument("--variants", nargs="*", help="subset of the config's variants (default: all)")
    parser.add_argument("--scratch", default=str(REPO / "runs" / "lm_sweep"), help="run output dirs (deleted after)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs that would execute")
    args, extra = parser.parse_known_args(argv)  # extra: passed to every run (e.g. --max_steps 2)

    sweep = yaml.safe_load(Path(args.config).read_text())
    results, scratch = Path(args.results), Path(args.scratch)
    experiment = sweep["experiment"]
    optimizers = args.optimizers or sweep["optimizers"]
    variants = args.variants if args.variants is not None else list(sweep.get("variants", {}))
    final_eval = {f"eval_{k}": v for k, v in sweep.get("final_eval", {}).items()}
    counts = {"executed": 0, "skipped": 0}

    def run_many(configs: list[dict]) -> None:
        for config in configs:
            if result_path(results, config).exists():
                counts["skipped"] += 1
                continue
            print(f"[lm_sweep] run {run_key(config)}: {json.dumps(config)}", flush=True)
            counts["executed"] += 1
            if not args.dry_run:
                record = execute(config, results, scratch)
                print(f"[lm_sweep] done in {record['wall_s']:.0f}s: eval_loss={record['result'].get('eval_loss')}",
                      flush=True)

    for optimizer in optimizers if args.phase in ("tune", "all") else []:
        done: list[dict] = []
        while True:  # one stage at a time: a later stage's points depend on the earlier results
            points, best = tuning_plan(load_results(results), sweep, experiment, optimizer, METRIC, extra)
            configs = [run_config(sweep, experiment, optimizer, sweep["tune_seed"], p, extra) for p in points]
            run_many([c for c in configs if c not in done])
            done = configs
            if best is not None or args.dry_run:
                break
    for name in optimizers + variants if args.phase in ("final", "all") else []:
        finals = final_configs(load_results(results), sweep, experiment, name, METRIC, extra)
        if finals is None:
            print(f"[lm_sweep] {name}: tuning unfinished, final runs wait", flush=True)
            continue
        run_many([{**c, **final_eval} for c in finals])
    verb = "listed" if args.dry_run else "executed"
    print(f"[lm_sweep] {counts['executed']} run(s) {verb}, {counts['skipped']} already done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
