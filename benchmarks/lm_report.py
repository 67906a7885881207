"""The LLM experiment's part of docs/results.md (issue 18), written by `python -m benchmarks.make_report`.

From the runs of `benchmarks.lm_sweep` (its YAML says which are final) and the zero-shot JSON of
`scripts/evaluate_lm.py`: accuracy per benchmark and optimizer beside the seed's AdaSAM row and the cost per step;
each optimizer's difference from AdamW on the same documents with a paired bootstrap 95% interval and the verdict
it allows; training curves and the tuning grid as a PNG. Nothing is measured here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.lm_sweep import final_settings
from benchmarks.sweep_plan import expand, final_configs, grid_stages, run_config, run_key

# The seed's AdaSAM row after instruction tuning (Sun et al., 2023), accuracy in %.
PAPER_LLM_ROW = {"hellaswag": 70.17, "openbookqa": 36.2, "boolq": 79.2, "arc_challenge": 44.28, "mmlu_stem": 50.49}
# The score reported per benchmark, as the Open LLM Leaderboard and lm-eval's model cards read them: the
# length-normalised accuracy where the choices are sentences of different lengths, plain accuracy where they are
# yes/no (BoolQ) or letters (MMLU).
METRIC = {"hellaswag": "acc_norm", "openbookqa": "acc_norm", "arc_challenge": "acc_norm", "boolq": "acc",
          "mmlu_stem": "acc"}
OTHER_METRIC = "acc"  # any other task
LOSS = "loss"  # tuning selects on the held-out eval_loss (benchmarks.lm_sweep)
RESAMPLES = 10_000
BASELINE = "adamw"  # every optimizer is compared with it, as in the seed


def paired_bootstrap(differences: list[np.ndarray], resamples: int = RESAMPLES, seed: int = 0
                     ) -> tuple[float, float, float]:
    """Mean over strata (benchmarks) of the mean per-document difference, and its percentile 95% interval from
    resampling documents with replacement within each stratum. Hand-written: scipy.stats.bootstrap has no strata."""
    rng = np.random.default_rng(seed)
    totals = np.zeros(resamples)
    for d in differences:
        for start in range(0, resamples, 1000):  # 1000 resamples at a time: MMLU-STEM's 2,741 x 10,000 is large
            rows = min(1000, resamples - start)
            totals[start:start + rows] += d[rng.integers(0, len(d), size=(rows, len(d)))].mean(axis=1)
    means = totals / len(differences)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(np.mean([d.mean() for d in differences])), float(low), float(high)


def verdict(low: float, high: float) -> str:
    return "better" if low > 0 else "worse" if high < 0 else "not separable"


def _documents(documents: dict, task: str) -> tuple[list[str], np.ndarray]:
    """(ids, per-document scores in {0, 1}) of `task` from its {"id", "acc", "acc_norm"} lists."""
    return documents["id"], np.asarray(documents[METRIC.get(task, OTHER_METRIC)], dtype=float)


class Experiment:
    """The final runs of each optimizer (and variant) of one lm_sweep plan, and the zero-shot scores."""

    def __init__(self, sweep: dict, records: list[dict], zero_shot: dict | None):
        self.sweep, self.zero_shot = sweep, zero_shot
        self.name = sweep["experiment"]
        self.records = [r for r in records if r["config"]["task"] == self.name]
        self.tasks = sweep["final_eval"]["tasks"].split(",")
        self.names = sweep["optimizers"] + list(sweep.get("variants", {}))
        by_key = {r["key"]: r for r in self.records}
        self.finals: dict[str, list[dict]] = {}
        self.settings: dict[str, dict] = {}
        for name in self.names:
            configs = final_configs(self.records, sweep, self.name, name, LOSS)
            if configs is None:
                continue
            self.settings[name] = {k: v for k, v in configs[0].items()
                                   if k not in ("task", "optimizer", "seed", "variant", *sweep["common"])}
            runs = [by_key.get(run_key({**c, **final_settings(sweep)})) for c in configs]
            if runs := [r for r in runs if r is not None]:
                self.finals[name] = runs

    def scores(self, name: str, task: str, seeds: list[int] | None = None) -> tuple[list[str], np.ndarray] | None:
        """Per-document scores of "zero-shot" or of an optimizer (the mean over its final runs, or over those of
        `seeds`); None if not measured."""
        if name == "zero-shot":
            if self.zero_shot is None or task not in self.zero_shot.get("documents", {}):
                return None
            return _documents(self.zero_shot["documents"][task], task)  # evaluate_lm.py's layout
        runs = [r for r in self.finals.get(name, []) if seeds is None or r["config"]["seed"] in seeds]
        if not runs:
            return None
        per_seed = [_documents(r["result"]["benchmarks"]["after"][task]["documents"], task) for r in runs]
        ids = per_seed[0][0]
        if any(other != ids for other, _ in per_seed):
            raise ValueError(f"{name}/{task}: the seeds' runs scored different documents")
        return ids, np.mean([s for _, s in per_seed], axis=0)

    def common_seeds(self, name: str, base: str) -> list[int] | None:
        """The seeds both have final runs of (all of one's, against zero-shot): a difference pairs the seeds too, so
        one optimizer's extra seed does not read as a difference between optimizers."""
        seeds = [{r["config"]["seed"] for r in self.finals.get(n, [])} for n in (name, base) if n != "zero-shot"]
        return sorted(set.intersection(*seeds)) if seeds else None

    def paired(self, name: str, base: str, seeds: list[int] | None, base_seeds: list[int] | None
               ) -> dict[str, np.ndarray] | None:
        """{task: per-document name − base in accuracy points}, name over `seeds` and base over `base_seeds`; None if
        either is missing a task."""
        pairs = {}
        for task in self.tasks:
            a, b = self.scores(name, task, seeds), self.scores(base, task, base_seeds)
            if a is None or b is None:
                return None
            if a[0] != b[0]:
                raise ValueError(f"{name} and {base} scored different documents of {task}: compare like with like")
            pairs[task] = 100 * (a[1] - b[1])
        return pairs

    def difference(self, name: str, base: str) -> dict | None:
        """{task: (mean, low, high)} and "mean" over the tasks, of name − base in accuracy points on their common
        seeds, "identical" and "seeds"; None if either is missing a task or they share no seed."""
        seeds = self.common_seeds(name, base)
        pairs = self.paired(name, base, seeds, seeds)
        if pairs is None:
            return None
        out = {task: paired_bootstrap([d]) for task, d in pairs.items()}
        out["mean"] = paired_bootstrap(list(pairs.values()))
        out["identical"] = not any(d.any() for d in pairs.values())  # the same answer on every document
        out["seeds"] = seeds
        if seeds and len(seeds) > 1:  # the same difference seed by seed: how much of it one training run moves
            out["by_seed"] = {seed: np.mean([d.mean() for d in self.paired(name, base, [seed], [seed]).values()])
                              for seed in seeds}
        return out


def _cost_rows(cost: dict | None, sweep: dict) -> dict:
    """The measured cost of the experiment's mode (LoRA or full) per optimizer, from benchmarks.lm_cost."""
    if cost is None:
        return {}
    mode = "lora" if sweep["common"].get("lora_r") else "full"
    return next((run["optimizers"] for run in cost["runs"] if run["mode"] == mode), {})


def accuracy_lines(exp: Experiment, cost: dict | None) -> list[str]:
    rows = _cost_rows(cost, exp.sweep)
    base_cost = rows.get(BASELINE)
    header = ["model / optimizer (setting)", *(f"{t} ({METRIC.get(t, OTHER_METRIC)})" for t in exp.tasks),
              f"mean of {len(exp.tasks)}",
              "s/step (x AdamW)", "peak RSS GB (x AdamW)"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]

    def row(label: str, name: str, cost_row: dict | None) -> None:
        scores = [exp.scores(name, task) for task in exp.tasks]
        values = [100 * s[1].mean() if s is not None else None for s in scores]
        cells = [f"{v:.1f}" if v is not None else "not run" for v in values]
        cells.append(f"{np.mean(values):.1f}" if None not in values else "-")
        if cost_row and base_cost:
            cells += [f"{cost_row['step_s']:.2f} ({cost_row['step_s'] / base_cost['step_s']:.2f})",
                      f"{cost_row['peak_rss_gb']:.2f} ({cost_row['peak_rss_gb'] / base_cost['peak_rss_gb']:.2f})"]
        else:
            cells += ["-", "-"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    final, zero_shot = exp.sweep["final_eval"], exp.zero_shot or {}
    same = (zero_shot.get("limit"), zero_shot.get("subset_seed")) == (final["tasks_limit"],
                                                                      final.get("tasks_subset_seed"))
    stale = " (on other documents than the final runs: rerun it, section 6)" if zero_shot and not same else ""
    row("SmolLM2-135M-Instruct, zero-shot" + stale, "zero-shot", None)
    for name in exp.names:
        setting = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in exp.settings.get(name, {}).items())
        runs = exp.finals.get(name, [])
        seeds = f"; {len(runs)} seeds" if len(runs) > 1 else ""
        row(f"{name} ({setting or 'tuning unfinished'}{seeds})", name, rows.get(name))
    paper = [PAPER_LLM_ROW.get(t) for t in exp.tasks]
    mean = f"{np.mean(paper):.1f}" if None not in paper else "-"
    lines.append("| paper: AdaSAM after instruction tuning (Llama-class, billions of parameters) | "
                 + " | ".join(str(p) if p is not None else "-" for p in paper) + f" | {mean} | - | - |")
    return lines


def difference_lines(exp: Experiment) -> list[str]:
    """name − base, per benchmark and over the five, with the interval and its verdict."""
    pairs = [(n, BASELINE) for n in exp.names if n != BASELINE]
    pairs += [("adasam", other) for other in ("amsgrad", "sam") if other in exp.names]
    pairs += [(v, spec["base"]) for v, spec in exp.sweep.get("variants", {}).items() if spec["base"] != BASELINE]
    pairs += [(n, "zero-shot") for n in (BASELINE, "adasam") if n in exp.names]  # did fine-tuning help at all?
    of = f"mean of {len(exp.tasks)}"
    lines = ["| difference (points) | " + " | ".join(exp.tasks) + f" | {of} | verdict ({of}) |",
             "| --- |" + " ---: |" * (len(exp.tasks) + 1) + " --- |"]
    for name, base in pairs:
        diff = exp.difference(name, base)
        if diff is None:
            lines.append(f"| {name} − {base} | " + " | ".join(["not run"] * (len(exp.tasks) + 1)) + " | - |")
            continue
        cells = [f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]" + ("" if verdict(lo, hi) == "not separable" else
                                                       f" {verdict(lo, hi)}") for m, lo, hi in
                 (diff[t] for t in [*exp.tasks, "mean"])]
        word = "identical on every document" if diff["identical"] else verdict(*diff["mean"][1:])
        if "by_seed" in diff:
            word += " (by seed: " + ", ".join(f"{s} {d:+.1f}" for s, d in diff["by_seed"].items()) + ")"
        seeds = f" (seed{'s' if len(diff['seeds']) > 1 else ''} {', '.join(map(str, diff['seeds']))})"
        lines.append(f"| {name} − {base}{seeds} | " + " | ".join(cells) + f" | **{word}** |")
    return lines


def seed_lines(exp: Experiment) -> list[str]:
    """Each optimizer with several final seeds: every seed's held-out loss and mean score, and the last seed minus
    the first on the same documents: the run-to-run noise that one seed's intervals leave out."""
    lines = []
    for name, runs in exp.finals.items():
        if len(runs) < 2:
            continue
        seeds = [r["config"]["seed"] for r in runs]
        mean, low, high = paired_bootstrap(list(exp.paired(name, name, seeds[-1:], seeds[:1]).values()))
        means = [np.mean([100 * exp.scores(name, t, [s])[1].mean() for t in exp.tasks]) for s in seeds]
        lines.append(f"| {name} | " + ", ".join(f"{s}: {r['result']['eval_loss']:.3f}" for s, r in zip(seeds, runs))
                     + " | " + ", ".join(f"{s}: {m:.1f}" for s, m in zip(seeds, means))
                     + f" | {mean:+.1f} [{low:+.1f}, {high:+.1f}] | "
                     + ("not separable" if verdict(low, high) == "not separable" else "the seeds differ") + " |")
    if not lines:
        return []
    of = f"mean of {len(exp.tasks)}"
    return [f"| optimizer | held-out loss, by seed | {of}, by seed | last seed − first ({of}) | verdict |",
            "| --- | --- | --- | ---: | --- |", *lines]


def training_losses(finals: dict[str, list[dict]]) -> dict[str, list[tuple[int, float]]]:
    """(step, logged training loss) of each optimizer's first final run."""
    return {name: sorted((h["step"], h["loss"]) for h in runs[0]["result"]["log_history"] if "loss" in h)
            for name, runs in finals.items()}


def loss_gaps(losses: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """Each optimizer's loss minus the baseline's at the same step: the same batches, so the length blocks cancel."""
    base = dict(losses.get(BASELINE, []))
    return {name: [(step, loss - base[step]) for step, loss in points if step in base]
            for name, points in losses.items() if name != BASELINE}


def curves_png(exp: Experiment, path: Path) -> bool:
    """Left: training loss against step of each optimizer's first final run; middle: the same minus AdamW's (the
    length-grouped batches make the raw curve jump); right: the held-out loss of every tuning run against its learning
    rate. One legend sits below the panels, clear of the lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tuning = [r for r in exp.records if not any(k.startswith("eval_tasks") for k in r["config"])]
    if not exp.finals and not tuning:
        return False
    fig, (ax_loss, ax_delta, ax_grid) = plt.subplots(1, 3, figsize=(17, 4.8))
    losses = training_losses(exp.finals)
    gaps = loss_gaps(losses)
    color = {name: f"C{i}" for i, name in enumerate(exp.names)}  # one colour per optimizer in every panel
    for name in exp.finals:
        if losses[name]:
            ax_loss.plot(*zip(*losses[name]), marker=".", color=color[name], label=name)
        if gaps.get(name):
            ax_delta.plot(*zip(*gaps[name]), marker=".", color=color[name], label=name)
    ax_delta.axhline(0.0, color="grey", lw=0.8)
    ax_delta.set(title=f"training loss minus {BASELINE}'s at the same step", xlabel="step", ylabel="loss difference")
    for optimizer in exp.sweep["optimizers"]:
        points = sorted((r["config"]["learning_rate"], r["result"]["eval_loss"]) for r in tuning
                        if r["config"]["optimizer"] == optimizer)
        if points:
            ax_grid.plot(*zip(*points), marker="o", color=color[optimizer], label=optimizer)
    seeds = sorted({runs[0]["config"]["seed"] for runs in exp.finals.values()})
    ax_loss.set(title=f"{exp.name}: training loss (final runs, seed {', '.join(map(str, seeds))})", xlabel="step",
                ylabel="mean loss over the last logging interval")
    ax_grid.set(title="tuning: held-out loss after training", xlabel="learning rate", ylabel="eval_loss",
                xscale="log")
    handles = {}  # one legend for the three panels (one colour per optimizer), below them, clear of the lines
    for ax in (ax_loss, ax_delta, ax_grid):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    names = [n for n in exp.names if n in handles]
    fig.legend([handles[n] for n in names], names, loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def tuning_lines(exp: Experiment) -> list[str]:
    """Every tuning point of the plan, run or not, with its held-out loss."""
    by_key = {r["key"]: r for r in exp.records}
    lines = ["| optimizer | setting | held-out eval_loss | train loss | wall (min) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for optimizer in exp.sweep["optimizers"]:
        chosen = exp.settings.get(optimizer)
        for stage in grid_stages(exp.sweep, optimizer):
            for point in expand(stage):
                record = by_key.get(run_key(run_config(exp.sweep, exp.name, optimizer, exp.sweep["tune_seed"], point)))
                setting = ", ".join(f"{k} {v:g}" for k, v in point.items())
                if chosen is not None and all(chosen.get(k) == v for k, v in point.items()):
                    edges = [k for k, v in point.items() if len(stage[k]) > 1 and v in (min(stage[k]), max(stage[k]))]
                    setting = f"**{setting}** (chosen" + (f"; {', '.join(edges)} at the grid's edge)" if edges else ")")
                if record is None:
                    lines.append(f"| {optimizer} | {setting} | not run | - | - |")
                    continue
                res = record["result"]
                lines.append(f"| {optimizer} | {setting} | {res['eval_loss']:.3f} | {res['train_loss']:.3f} | "
                             f"{record['wall_s'] / 60:.1f} |")
    return lines


def section(sweep: dict, records: list[dict], zero_shot_path: Path, cost_path: Path, png_dir: Path) -> list[str]:
    """The whole LLM-experiment section of docs/results.md."""
    zero_shot = json.loads(zero_shot_path.read_text()) if zero_shot_path.exists() else None
    cost = json.loads(cost_path.read_text()) if cost_path.exists() else None
    exp = Experiment(sweep, records, zero_shot)
    common, final = sweep["common"], sweep["final_eval"]
    n_final = sum(len(r) for r in exp.finals.values())
    lines = [f"## 5. LLM fine-tuning: SmolLM2-135M-Instruct on the seed's five LLM benchmarks (`{exp.name}`)", "",
             f"`python -m benchmarks.lm_sweep` (plan: benchmarks/lm_sweep.yaml): every run fine-tunes "
             f"{common['model_name_or_path']} on the train splits of {common['train_tasks'].replace(',', ', ')} "
             "(Alpaca records, question -> gold answer; no evaluation question among them), the same data in the same "
             "order, with " + ", ".join(f"{k} {v}" for k, v in common.items()
                                        if k not in ("model_name_or_path", "train_tasks")) + ". "
             f"Tuning: the grid below at seed {sweep['tune_seed']}, selected on the loss of records held out from "
             "the train splits, never on a benchmark. Final runs: the chosen point, seeds "
             f"{sweep['seeds']}; {n_final} stored.",
             "",
             f"Scores: lm-eval{_lm_eval_version(exp)}, zero-shot log-likelihood multiple choice, on "
             f"{final['tasks_limit']} documents of each benchmark (of each of MMLU-STEM's 19 subjects) drawn with "
             f"seed {final.get('tasks_subset_seed')}: the same documents for every row. In % ("
             + ", ".join(f"{t} {METRIC.get(t, OTHER_METRIC)}" for t in exp.tasks)
             + "); cost: `benchmarks.lm_cost --preset smollm2` (LoRA, batch 4 x 256, side by side in one run; "
             "section 3).", ""]
    lines += accuracy_lines(exp, cost)
    if exp.sweep.get("variants"):
        lines += ["", "The variants' cost per step (" + ", ".join(exp.sweep["variants"]) + ") is measured on MiniLM-L6 "
                  "in section 3's table of cheaper SAM steps, not on SmolLM2."]
    lines += ["", "Differences on the same documents, in accuracy points, with a paired bootstrap 95% interval "
              f"({RESAMPLES:,} resamples of the documents; for the mean over the benchmarks, within each). The verdict "
              "is \"better\" or \"worse\" when the interval excludes 0, else \"not separable\". The interval covers "
              "which documents were drawn, not the training seed: run-to-run noise comes on top (the seed table "
              "below, where an optimizer has several seeds). An optimizer's scores above are its seeds' mean per "
              "document; a difference pairs the seeds both optimizers ran (in brackets), and with several it gives the "
              "mean of 5 seed by seed beside the verdict: a verdict that one seed's difference contradicts is not "
              "robust to the training run.", ""]
    lines += difference_lines(exp)
    if spread := seed_lines(exp):
        lines += ["", "The same optimizer and setting trained with another seed, scored on the same documents. The "
                  "seed draws the held-out records, the data order and LoRA's initialisation: held-out losses "
                  "compare across optimizers within a seed, not across seeds.", "", *spread]
    png = png_dir / f"lm_curves_{exp.name}.png"
    if curves_png(exp, png):
        lines += ["", f"![{exp.name}: training loss and tuning](results/{png.name})", "",
                  "Left: training loss every 10 steps. Batches are grouped by length (group_by_length), so short "
                  "ARC/OpenBookQA answers and long BoolQ passages alternate in blocks and the curve jumps with them; "
                  "every optimizer sees the same blocks in the same order, so the curves compare point by point. "
                  f"Middle: each curve minus {BASELINE}'s at the same step, where the blocks cancel (below 0: a lower "
                  f"training loss than {BASELINE} on the same batches). Right: held-out loss of each tuning run. "
                  "A line equal to another's lies under it."]
    lines += ["", "Tuning runs (seed {}):".format(sweep["tune_seed"]), ""]
    lines += tuning_lines(exp)
    lines += ["", "Wall: each run's elapsed time, with whatever else ran on the machine then; the cost per step is "
              "the table above's (measured side by side)."]
    return lines + [""]


def _lm_eval_version(exp: Experiment) -> str:
    """" <version>" of the lm-eval that scored the runs (or the zero-shot model), or "" if not recorded."""
    reports = [runs[0]["result"] for runs in exp.finals.values()] + [exp.zero_shot or {}]
    versions = [r.get("versions", {}).get("lm_eval") for r in reports]
    return next((f" {v}" for v in versions if v), "")
