"""The plan both sweeps follow (`benchmarks.glue_sweep`, `benchmarks.lm_sweep`): staged grids at `tune_seed`, then
the tuned point over `seeds`, then the variants, each run named by the hash of its configuration and stored as JSON,
so a finished run is found and skipped and a sweep continues across sessions."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_sweep_flags", "best_point", "expand", "final_configs", "grid_stages", "load_results", "result_path",
           "run_config", "run_key", "run_sweep", "tuning_plan"]


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


def add_sweep_flags(parser: argparse.ArgumentParser, config: Path, results: Path, scratch: Path) -> None:
    """The flags both sweeps take; anything else on the command line goes to every run (e.g. --max_steps 2)."""
    parser.add_argument("--config", default=str(config))
    parser.add_argument("--results", default=str(results), help="folder of per-run JSON files")
    parser.add_argument("--phase", choices=["tune", "final", "all"], default="all")
    parser.add_argument("--optimizers", nargs="*", help="subset of the config's optimizers")
    parser.add_argument("--variants", nargs="*", help="subset of the config's variants (default: all)")
    parser.add_argument("--scratch", default=str(scratch), help="run output dirs (deleted after)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs that would execute")


def run_sweep(sweep: dict, args, extra: list[str], tasks: list[str], metric_of: Callable[[str], str],
              execute: Callable[[dict], dict], final_settings: dict | None = None, name: str = "sweep") -> int:
    """Tune, then run the finals (with `final_settings` added to each), for each task; print what ran."""
    results = Path(args.results)
    optimizers = args.optimizers or sweep["optimizers"]
    variants = args.variants if args.variants is not None else list(sweep.get("variants", {}))
    counts = {"executed": 0, "skipped": 0}

    def run_many(configs: list[dict], metric: str) -> None:
        for config in configs:
            if result_path(results, config).exists():
                counts["skipped"] += 1
                continue
            print(f"[{name}] run {run_key(config)}: {json.dumps(config)}", flush=True)
            counts["executed"] += 1
            if not args.dry_run:
                record = execute(config)
                print(f"[{name}] done in {record['wall_s']:.0f}s: eval_{metric}="
                      f"{record['result'].get(f'eval_{metric}')}", flush=True)

    for task in tasks:
        metric = metric_of(task)
        for optimizer in optimizers if args.phase in ("tune", "all") else []:
            done: list[dict] = []
            while True:  # one stage at a time: a later stage's points depend on the earlier results
                points, best = tuning_plan(load_results(results), sweep, task, optimizer, metric, extra)
                configs = [run_config(sweep, task, optimizer, sweep["tune_seed"], p, extra) for p in points]
                run_many([c for c in configs if c not in done], metric)
                done = configs
                if best is not None or args.dry_run:
                    break
        for target in optimizers + variants if args.phase in ("final", "all") else []:
            finals = final_configs(load_results(results), sweep, task, target, metric, extra)
            if finals is None:
                print(f"[{name}] {task}/{target}: tuning unfinished, final runs wait", flush=True)
                continue
            run_many([{**c, **(final_settings or {})} for c in finals], metric)
    verb = "listed" if args.dry_run else "executed"
    print(f"[{name}] {counts['executed']} run(s) {verb}, {counts['skipped']} already done", flush=True)
    return 0
