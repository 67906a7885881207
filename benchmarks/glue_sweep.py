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
import hashlib
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from benchmarks.harness import REPO

DEFAULT_RESULTS = REPO / "docs" / "results" / "runs"


def run_key(config: dict) -> str:
    """A stable name for a run: the hash of its configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def grid_stages(sweep: dict, optimizer: str) -> list[dict]:
    grid = sweep["grid"][optimizer]
    return grid if isinstance(grid, list) else [grid]


def expand(stage: dict) -> list[dict]:
    names = sorted(stage)
    return [dict(zip(names, values)) for values in itertools.product(*(stage[n] for n in names))]


def run_config(sweep: dict, task: str, optimizer: str, seed: int, point: dict, extra_args=()) -> dict:
    """Everything that defines a run; extra command-line flags are part of it (and of its hash)."""
    config = {"task": task, "optimizer": optimizer, "seed": seed, **sweep["common"], **point}
    return {**config, "extra_args": list(extra_args)} if extra_args else config


def result_path(results: Path, config: dict) -> Path:
    return results / config["task"] / config.get("variant", config["optimizer"]) / f"{run_key(config)}.json"


def final_configs(records: list[dict], sweep: dict, task: str, name: str, metric: str,
                  extra_args=()) -> list[dict] | None:
    """The final runs (one per seed) of an optimizer or a variant, or None while tuning is unfinished.

    A variant (`variants:` in the sweep file) is its base optimizer at the base's tuned point
    with a few settings changed (e.g. sam_mode): it is not tuned on its own.
    """
    variant = sweep.get("variants", {}).get(name)
    optimizer = variant["base"] if variant else name
    best = best_point(records, sweep, task, optimizer, metric, extra_args)
    if best is None:
        return None
    overrides = {k: v for k, v in variant.items() if k != "base"} if variant else {}
    configs = [run_config(sweep, task, optimizer, seed, {**best, **overrides}, extra_args) for seed in sweep["seeds"]]
    return [{**c, "variant": name} for c in configs] if variant else configs


def load_results(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*/*/*.json"))]


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


def tuning_plan(records: list[dict], sweep: dict, task: str, optimizer: str, metric: str,
                extra_args=()) -> tuple[list[dict], dict | None]:
    """The tuning points known so far (stage by stage) and the best one, or None while unfinished."""
    by_key = {r["key"]: r for r in records}
    points, best, best_score = [], {}, None
    for stage in grid_stages(sweep, optimizer):
        scored = [] if best_score is None else [(best_score, best)]
        for point in [{**best, **p} for p in expand(stage)]:
            if point not in points:
                points.append(point)
            record = by_key.get(run_key(run_config(sweep, task, optimizer, sweep["tune_seed"], point, extra_args)))
            if record is None:
                best = None
            elif best is not None:
                scored.append((record["result"][f"eval_{metric}"], point))
        if best is None:
            return points, None
        # Ties: the earlier point. A loss is minimised (the Trainer's rule for metric_for_best_model).
        sign = -1 if metric.endswith("loss") else 1
        best_score, best = max(scored, key=lambda s: sign * s[0])
    return points, best


def best_point(records: list[dict], sweep: dict, task: str, optimizer: str, metric: str,
               extra_args=()) -> dict | None:
    return tuning_plan(records, sweep, task, optimizer, metric, extra_args)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "benchmarks" / "sweep.yaml"))
    parser.add_argument("--results", default=str(DEFAULT_RESULTS), help="folder of per-run JSON files")
    parser.add_argument("--data_dir", default=None, help="GLUE TSV folder (default: $GLUE_DIR, embedded, Hub)")
    parser.add_argument("--phase", choices=["tune", "final", "all"], default="all")
    parser.add_argument("--tasks", nargs="*", help="subset of the config's tasks")
    parser.add_argument("--optimizers", nargs="*", help="subset of the config's optimizers")
    parser.add_argument("--variants", nargs="*", help="subset of the config's variants (default: all)")
    parser.add_argument("--scratch", default=str(REPO / "runs" / "sweep"), help="run output dirs (deleted after)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs that would execute")
    args, extra = parser.parse_known_args(argv)  # extra: passed to every run (e.g. --max_steps 2)

    from adasam_hf.glue import get_task

    sweep = yaml.safe_load(Path(args.config).read_text())
    results, scratch = Path(args.results), Path(args.scratch)
    tasks = args.tasks or sweep["tasks"]
    optimizers = args.optimizers or sweep["optimizers"]
    variants = args.variants if args.variants is not None else list(sweep.get("variants", {}))
    counts = {"executed": 0, "skipped": 0}

    def run_many(configs: list[dict], metric: str) -> None:
        for config in configs:
            if result_path(results, config).exists():
                counts["skipped"] += 1
                continue
            print(f"[sweep] run {run_key(config)}: {json.dumps(config)}", flush=True)
            counts["executed"] += 1
            if args.dry_run:
                continue
            record = execute(config, results, args.data_dir, scratch)
            print(f"[sweep] done in {record['wall_s']:.0f}s: eval_{metric}={record['result'].get(f'eval_{metric}')}",
                  flush=True)

    def configs_for(task, optimizer, seeds, points):
        return [run_config(sweep, task, optimizer, s, p, extra) for p in points for s in seeds]

    for task in tasks:
        metric = get_task(task).metric_for_best_model
        for optimizer in optimizers:
            if args.phase in ("tune", "all"):
                done: list[dict] = []
                while True:  # one stage at a time: a later stage's points depend on the earlier results
                    points, best = tuning_plan(load_results(results), sweep, task, optimizer, metric, extra)
                    run_many([p for p in configs_for(task, optimizer, [sweep["tune_seed"]], points) if p not in done],
                             metric)
                    done = configs_for(task, optimizer, [sweep["tune_seed"]], points)
                    if best is not None or args.dry_run:
                        break
        for name in optimizers + variants if args.phase in ("final", "all") else []:
            finals = final_configs(load_results(results), sweep, task, name, metric, extra)
            if finals is None:
                print(f"[sweep] {task}/{name}: tuning unfinished, final runs wait", flush=True)
                continue
            run_many(finals, metric)
    verb = "listed" if args.dry_run else "executed"
    print(f"[sweep] {counts['executed']} run(s) {verb}, {counts['skipped']} already done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
