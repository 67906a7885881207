"""Write docs/results.md (tables) and docs/results/*.png (learning curves) from the committed JSON.

    python -m benchmarks.make_report [--results docs/results/runs] [--cost docs/results/cost.json]

Nothing is measured here: every number comes from the per-run JSON of `benchmarks.glue_sweep` and the cost
JSON of `benchmarks.optimizer_cost`, so the report can be regenerated exactly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

from benchmarks.sweep_plan import expand, final_configs, grid_stages, load_results, run_key
from benchmarks.harness import REPO
from benchmarks.lm_cost import format_table
from benchmarks.lm_report import PAPER_LLM_ROW
from benchmarks.lm_report import section as lm_experiment_section

# Reported by the AdaSAM paper's seed rows we know of (RoBERTa, GPU); different model and budget.
PAPER_ADASAM = {"rte": 72.56, "mrpc": 92.5}
PAPER_PEAK_MEMORY_GB = {"cola": 3.30, "mnli": 8.08}
# Always predicting the commonest dev label: RTE 146 of 277 are entailment (accuracy); MRPC 279 of 408 are
# paraphrases (F1 = 2 * 279 / (279 + 408)). A run at this score has learned nothing usable.
MAJORITY_CLASS = {"rte": 52.71, "mrpc": 81.22}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def final_runs(records, sweep, task, name, metric) -> tuple[dict | None, list[dict]]:
    """The chosen setting of an optimizer or variant and its stored final runs."""
    configs = final_configs(records, sweep, task, name, metric, sweep.get("extra_args", ()))
    if configs is None:
        return None, []
    by_key = {r["key"]: r for r in records}
    setting = {k: v for k, v in configs[0].items() if k not in ("task", "optimizer", "seed", "variant",
                                                                 *sweep["common"])}
    return setting, [by_key[run_key(c)] for c in configs if run_key(c) in by_key]


def accuracy_section(records, sweep, tasks, optimizers) -> tuple[list[str], dict]:
    from adasam_hf.glue import get_task

    lines = ["## 1. Dev metrics (final runs: mean ± std over seeds)", ""]
    lines += ["Selection used the dev set (the only labelled split here): the learning rate (and rho) of each",
              f"optimizer were chosen on seed {sweep['tune_seed']}, then rerun with seeds {sweep['seeds']}.", ""]
    summary, collapsed = {}, {}
    header = "| task (metric) | " + " | ".join(optimizers) + " | majority class | paper AdaSAM (RoBERTa) |"
    lines += [header, "|" + "---|" * (len(optimizers) + 3)]
    for task in tasks:
        metric = get_task(task).metric_for_best_model
        cells = {}
        for opt in optimizers:
            best, runs = final_runs(records, sweep, task, opt, metric)
            values = [100 * r["result"][f"eval_{metric}"] for r in runs]
            if values:
                summary[(task, opt)] = (*mean_std(values), len(values), best)
                cells[opt] = summary[(task, opt)]
                if task in MAJORITY_CLASS:
                    collapsed[(task, opt)] = sum(abs(v - MAJORITY_CLASS[task]) < 0.005 for v in values)
        top = max(cells, key=lambda o: cells[o][0]) if cells else None
        row = []
        for opt in optimizers:
            if opt not in cells:
                row.append("not run")
                continue
            m, s, n, _ = cells[opt]
            of = "" if n == len(sweep["seeds"]) else f" of {len(sweep['seeds'])}"
            text = f"{m:.2f} ± {s:.2f} (n={n}{of})"
            text = f"**{text}**" if opt == top else text
            stuck = collapsed.get((task, opt), 0)
            row.append(text + (f"; {stuck} at majority" if stuck else ""))
        paper = PAPER_ADASAM.get(task)
        lines.append(f"| {task} ({metric}) | " + " | ".join(row) +
                     f" | {MAJORITY_CLASS.get(task, '–')} | {paper if paper else '–'} |")
    lines += ["", "\"k at majority\": k of the final runs scored exactly the majority-class score, the mark of a",
              "model that predicts one class: it has not learned the task. \"n=1 of 3\": only some seeds have run yet."]
    lines += ["", "The paper's claim (Sun et al., 2023, arXiv 2303.00565): AdaSAM beats SGD, AMSGrad and SAM on GLUE "
              "fine-tuning. Ranking here, by mean:", ""]
    for task in tasks:
        ranked = sorted((o for o in optimizers if (task, o) in summary), key=lambda o: -summary[(task, o)][0])
        lines.append(f"- {task}: " + (" > ".join(f"{o} {summary[(task, o)][0]:.2f}" for o in ranked)
                                      if ranked else "no final runs yet") + ".")
    lines += ["", "Chosen settings:", ""]
    for (task, opt), (_, _, _, best) in sorted(summary.items()):
        lines.append(f"- {task} / {opt}: " + ", ".join(f"{k}={v}" for k, v in sorted(best.items())))
    lines += ["", "The paper's numbers are for RoBERTa (125M/355M parameters) on a GPU with its own budget;",
              "ours are MiniLM-L6 (22.7M) on 2 CPU cores with the same epochs and batch for every optimizer.",
              "Compare the ranking of the optimizers, not the absolute numbers.", ""]
    return lines, summary


def statistics_section(summary, tasks) -> list[str]:
    lines = ["## 4. Is AdaSAM's gain larger than the seed-to-seed noise?", ""]
    for task in tasks:
        if (task, "adasam") not in summary:
            lines.append(f"- {task}: AdaSAM not run yet.")
            continue
        m, s, _, _ = summary[(task, "adasam")]
        for other in ("amsgrad", "sam"):
            if (task, other) not in summary:
                lines.append(f"- {task}: {other} not run yet.")
                continue
            mo, so, _, _ = summary[(task, other)]
            gain, noise = m - mo, max(s, so)
            verdict = "yes" if gain > noise else "no"
            lines.append(f"- {task}: AdaSAM − {other} = {gain:+.2f} points; larger std = {noise:.2f}: {verdict}.")
    return lines + [""]


def modes_accuracy_section(summary, sweep, tasks) -> list[str]:
    """Each cheaper-step variant against its full base optimizer: at most 1 point below it is the goal."""
    variants = sweep.get("variants", {})
    if not variants:
        return []
    lines = ["### Cheaper SAM steps against full AdaSAM (goal: dev metric within 1 point)", ""]
    for task in tasks:
        for name, spec in variants.items():
            base = spec["base"]
            if (task, name) not in summary or (task, base) not in summary:
                lines.append(f"- {task}: {name} or {base} not run yet.")
                continue
            (m, s, n, _), (mb, sb, nb, _) = summary[(task, name)], summary[(task, base)]
            diff = m - mb
            verdict = "goal met" if diff >= -1.0 else "goal not met (more than 1 point below)"
            noise = "smaller" if abs(diff) <= max(s, sb) else "larger"
            lines.append(f"- {task}: {name} − {base} = {diff:+.2f} points (n={n} vs n={nb}): {verdict}; "
                         f"{noise} than the larger seed std ({max(s, sb):.2f}).")
    return lines + [""]


def curves_section(records, sweep, tasks, optimizers, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adasam_hf.glue import get_task

    lines = [f"## 2. Learning curves (final setting, seed {sweep['tune_seed']})", ""]
    for task in tasks:
        metric = get_task(task).metric_for_best_model
        fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
        plotted = False
        for opt in optimizers:
            _, runs = final_runs(records, sweep, task, opt, metric)
            run = next((r for r in runs if r["config"]["seed"] == sweep["tune_seed"]), None)
            if run is None:
                continue
            history = run["result"].get("log_history", [])
            train = [(h["step"], h["loss"]) for h in history if "loss" in h]
            dev = [(h["step"], h[f"eval_{metric}"]) for h in history if f"eval_{metric}" in h]
            if train:
                ax_loss.plot(*zip(*train), label=opt)
            if dev:
                ax_metric.plot(*zip(*dev), marker="o", label=opt)
            plotted = True
        if not plotted:
            plt.close(fig)
            lines.append(f"- {task}: no final runs yet.")
            continue
        ax_loss.set(title=f"{task}: train loss", xlabel="step", ylabel="loss")
        ax_metric.set(title=f"{task}: dev {metric}", xlabel="step", ylabel=metric)
        ax_loss.legend()
        ax_metric.legend()
        fig.tight_layout()
        png = out_dir / f"curves_{task}.png"
        fig.savefig(png, dpi=90)
        plt.close(fig)
        lines.append(f"![{task} learning curves](results/{png.name})")
    return lines + [""]


def cost_section(cost_path: Path) -> list[str]:
    lines = ["## 3. Cost per step (side by side in one run, ratio to AdamW)", ""]
    if not cost_path.exists():
        command = "python -m benchmarks.optimizer_cost --json docs/results/cost.json"
        return lines + [f"Not measured yet: run `{command}`.", ""]
    cost = json.loads(cost_path.read_text())
    for model in cost["models"]:
        lines += [f"**{model['name']}** ({model['params'] / 1e6:.1f}M parameters, batch {model['batch']}, "
                  f"{cost['device']}, {cost['threads']} threads):", "",
                  "| optimizer | time / step (s) | time ratio | peak RSS (GB) | RSS ratio "
                  "| optimizer-held tensors (param sets) |",
                  "|---|---|---|---|---|---|"]
        base = model["optimizers"]["adamw"]
        for name, row in model["optimizers"].items():
            lines.append(f"| {name} | {row['step_s']:.3f} | {row['step_s'] / base['step_s']:.2f} | "
                         f"{row['peak_rss_gb']:.2f} | {row['peak_rss_gb'] / base['peak_rss_gb']:.2f} | "
                         f"{row['held_param_sets']:.2f} |")
        set_gb = model["params"] * 4 / 1e9  # fp32
        delta = model["optimizers"]["adasam"]["peak_rss_gb"] - base["peak_rss_gb"]
        lines += ["", f"AdaSAM − AdamW peak RSS: {delta:.2f} GB = {delta / set_gb:.2f} parameter sets "
                  f"(1 set = {set_gb:.2f} GB; theory: 2 sets).", ""]
    lines += ["Theory: AdaSAM holds m, v, v̂ (3 parameter sets) plus the saved copy of w (1 set) = 4 sets; AdamW",
              "holds 2. The seed's reported AdaSAM peak memory (GPU, RoBERTa): " +
              ", ".join(f"{t.upper()} {gb} GB" for t, gb in PAPER_PEAK_MEMORY_GB.items()) +
              "; it includes activations at their batch and length, so compare the ratios, not the totals.", ""]
    return lines


def lm_cost_section(path: Path) -> list[str]:
    lines = ["### Causal-LM fine-tuning, ~1.1B Llama config: LoRA and full, time and memory per optimizer", ""]
    if not path.exists():
        return lines + ["Not measured yet: run `python -m benchmarks.lm_cost --json docs/results/lm_cost.json`.", ""]
    cost = json.loads(path.read_text())
    lines += [f"Random-weight LlamaConfig (TinyLlama-1.1B's shape), weights in {cost['dtype']}, LoRA rank "
              f"{cost['lora_r']} on {', '.join(cost['lora_targets'])}; median of {cost['steps']} timed steps after a "
              "warm-up step; peak RSS of a fresh process per run. Theory for the state column: SGD (momentum) 1, "
              "AdamW 2, AMSGrad 3, SAM 1 + 1 saved copy, AdaSAM 3 + 1 saved copy."]
    lines += format_table(cost).splitlines()
    full = next((r["optimizers"] for r in cost["runs"] if r["mode"] == "full"), None)
    if full and {"adamw", "adasam", "sgd"} <= set(full):
        set_gb = full["adasam"]["trainable_params"] * 2 / 1e9 if cost["dtype"] == "bfloat16" else None
        delta = full["adasam"]["peak_rss_gb"] - full["adamw"]["peak_rss_gb"]
        lines += ["", f"Full fine-tuning: AdaSAM − AdamW peak RSS = {delta:.2f} GB"
                  + (f" = {delta / set_gb:.2f} parameter sets of {set_gb:.2f} GB (theory: 2)" if set_gb else "")
                  + ". At batch 1 x 128 the optimizer update over 1.1B weights is a large share of a step "
                  f"(SGD {full['sgd']['step_s']:.1f} s vs AdamW {full['adamw']['step_s']:.1f} s), so the second "
                  "pass adds less than 2x; with LoRA the passes dominate and AdaSAM costs about two AdamW steps."]
    return lines + [""]


def measured(title: str, path: Path, command: str) -> tuple[list[str], dict | None]:
    """A section's heading, and the JSON it reports (None, with a line saying how to measure it, if absent)."""
    lines = [f"### {title}", ""]
    if not path.exists():
        return lines + [f"Not measured yet: run `{command}`.", ""], None
    return lines, json.loads(path.read_text())


def smollm2_cost_section(path: Path) -> list[str]:
    command = ("python -m benchmarks.lm_cost --preset smollm2 --dtype float32 --batch 4 --seq 256 "
               "--json docs/results/lm_cost_smollm2.json")
    lines, cost = measured("Fine-tuning SmolLM2-135M-Instruct: LoRA r16 and full, time and memory per optimizer",
                           path, command)
    if cost is None:
        return lines
    lines += [f"The pretrained model of the LLM experiments, weights in {cost['dtype']}, LoRA rank {cost['lora_r']} on "
              f"{', '.join(cost['lora_targets'])}; median of {cost['steps']} timed steps after a warm-up step; peak "
              f"RSS of a fresh process per run. `{command}`"]
    lines += format_table(cost).splitlines()
    for run in cost["runs"]:
        rows = run["optimizers"]
        if {"adamw", "adasam"} <= set(rows):
            sets = rows["adasam"]["held_param_sets"] - rows["adamw"]["held_param_sets"]
            gb = rows["adasam"]["held_gb"] - rows["adamw"]["held_gb"]
            peak = rows["adasam"]["peak_rss_gb"] - rows["adamw"]["peak_rss_gb"]
            lines += ["", f"{run['mode']}: AdaSAM − AdamW = {sets:.2f} parameter sets held ({gb:.3f} GB; theory 2: "
                      f"v̂ and the saved copy), peak RSS {peak:+.2f} GB, time per step "
                      f"x{rows['adasam']['step_s'] / rows['adamw']['step_s']:.2f}."]
    return lines + [""]


ZERO_SHOT_COMMAND = ("python scripts/evaluate_lm.py --model_name_or_path smollm2-135m --tasks "
                     "hellaswag,openbookqa,boolq,arc_challenge,mmlu_stem --limit 200 --subset_seed 0 --batch_size 16 "
                     "--output_dir docs/results/lm_zero_shot_smollm2 --overwrite_output_dir")


def zero_shot_section(path: Path) -> list[str]:
    command = ZERO_SHOT_COMMAND
    lines, report = measured("SmolLM2-135M-Instruct before fine-tuning: zero-shot on the seed's five LLM benchmarks",
                             path, command)
    if report is None:
        return lines
    drawn = f"drawn with seed {report['subset_seed']}" if report.get("subset_seed") is not None else "first"
    lines += [f"lm-eval over the packaged tasks (`{command}`): {report['limit']} documents of each task, {drawn} "
              f"(MMLU-STEM: of each of its 19 subjects; {report['results'].get('mmlu_stem', {}).get('n', '-')} "
              "documents), "
              f"{report['dtype']}, {report['wall_time_s'] / 60:.0f} min of wall time. The paper's row is AdaSAM "
              "after instruction tuning of a Llama-class model of billions of parameters, for scale only.", "",
              "| task | n | acc (%) | acc_norm (%) | ± stderr | paper, AdaSAM (%) |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for task, r in report["results"].items():
        lines.append(f"| {task} | {r['n']} | {100 * r['acc']:.1f} | {100 * r['acc_norm']:.1f} | "
                     f"{100 * r['acc_stderr']:.1f} | {PAPER_LLM_ROW.get(task, '-')} |")
    return lines + [""]


def fsdp_cost_section(path: Path) -> list[str]:
    from benchmarks.fsdp_cost import format_table as fsdp_table

    command = "python -m benchmarks.fsdp_cost --json docs/results/fsdp_cost.json"
    lines, cost = measured("Sharded with FSDP2: what AdaSAM and AdamW hold per rank, on 1 and 2 ranks", path, command)
    if cost is None:
        return lines
    lines += [f"`{command}`: each (ranks, optimizer) its own torchrun (gloo); the model loaded sharded by transformers "
              "(`distributed_config=DistributedConfig(fsdp_size=N)`; 1 rank: unsharded), SAMTrainer steps, median "
              f"of {cost['steps']} steps after a warm-up; per rank, the largest over the ranks.", ""]
    lines += fsdp_table(cost).splitlines()
    runs = {run["ranks"]: run["optimizers"] for run in cost["runs"]}
    if {1, 2} <= set(runs) and all({"adamw", "adasam"} <= set(r) for r in runs.values()):
        def most(ranks, name, key):
            return max(r[key] for r in runs[ranks][name]["ranks"])

        extra = {n: most(n, "adasam", "held_gb") - most(n, "adamw", "held_gb") for n in (1, 2)}
        peak = {n: most(n, "adasam", "peak_rss_gb") - most(n, "adamw", "peak_rss_gb") for n in (1, 2)}
        lines += ["", f"AdaSAM − AdamW held per rank: {extra[1]:.3f} GB on 1 rank, {extra[2]:.3f} GB on 2 (v̂ and the "
                  f"saved copy of this rank's shard: x{extra[2] / extra[1]:.2f}); AdaSAM on 2 ranks holds "
                  f"{most(2, 'adasam', 'held_gb'):.3f} GB per rank, what AdamW holds on 1 "
                  f"({most(1, 'adamw', 'held_gb'):.3f} GB). Peak RSS per rank, AdaSAM − AdamW: {peak[1]:+.2f} GB on "
                  f"1 rank, {peak[2]:+.2f} GB on 2, of which the optimizer's tensors are {extra[1]:.2f} and "
                  f"{extra[2]:.2f} GB; the other {peak[2] - extra[2]:.2f} GB on 2 ranks is not attributed yet (the "
                  "tensors the optimizer holds are counted exactly; the second pass's transient all-gather and "
                  "reduce-scatter buffers are the candidates). Step time AdaSAM / AdamW under FSDP2 on 2 ranks: "
                  f"x{most(2, 'adasam', 'step_s') / most(2, 'adamw', 'step_s'):.2f} (two forward/backward passes, "
                  "each with its all-gathers and reduce-scatter, against one)."]
    return lines + [""]


def runs_section(records, sweep, tasks) -> list[str]:
    """Every stored run, so partial sweeps and the tuning behind each choice are visible."""
    from adasam_hf.glue import get_task

    lines = ["## Appendix: every stored run", "",
             "| task | optimizer / variant | seed | setting | dev metric | wall (min) |", "|---|---|---|---|---|---|"]
    shown = {"task", "optimizer", "seed", "variant", "extra_args", *sweep["common"]}
    for r in sorted(records, key=lambda r: (tasks.index(r["config"]["task"]) if r["config"]["task"] in tasks else 99,
                                            r["config"].get("variant", r["config"]["optimizer"]), r["config"]["seed"],
                                            json.dumps(r["config"], sort_keys=True))):
        c = r["config"]
        metric = get_task(c["task"]).metric_for_best_model
        setting = ", ".join(f"{k}={v}" for k, v in sorted(c.items()) if k not in shown)
        lines.append(f"| {c['task']} | {c.get('variant', c['optimizer'])} | {c['seed']} | {setting} | "
                     f"{metric} {100 * r['result'][f'eval_{metric}']:.2f} | {r['wall_s'] / 60:.1f} |")
    return lines + [""]


def modes_cost_section(path: Path) -> list[str]:
    lines = ["### Cheaper SAM steps (sam_mode, sam_interval): time per step, ratio to AdamW", ""]
    if not path.exists():
        return lines + ["Not measured yet: run `python -m benchmarks.sam_modes_cost --json "
                        "docs/results/sam_modes_cost.json`.", ""]
    cost = json.loads(path.read_text())
    lines += [f"MiniLM-L6, batch {cost['batch']} x {cost['seq']}, {cost['threads']} threads, {cost['cpu']}; "
              f"mean over {cost['rounds']} x {cost['steps']} steps per variant (one- and two-pass steps mix). "
              "Goal: at most 1.3x AdamW.", "",
              "| variant | s / step | ratio to AdamW | SAM steps (realized / expected) | peak RSS (MiB) |",
              "|---|---|---|---|---|"]
    for r in cost["rows"]:
        lines.append(f"| {r['variant']} | {r['step_s']:.3f} | {r['ratio_to_adamw']:.2f} | "
                     f"{r['sam_step_fraction']:.2f} / {r['expected_fraction']:.2f} | {r['peak_rss_mib']:.0f} |")
    met = [r["variant"] for r in cost["rows"] if r["variant"] != "adamw" and r["ratio_to_adamw"] <= 1.3]
    lines += ["", f"Within 1.3x AdamW: {'; '.join(met) if met else 'none'}. A layer-sparse SAM step still runs the "
              "second forward from the lowest sampled layer up and the activation backward down to it, so alone it "
              "saves far less than skipping the second pass (docs/design.md works out why); its peak RSS is higher "
              "because the first-pass gradients of the frozen layers stay allocated through the second pass (they "
              "are the ones the update uses)."]
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "benchmarks" / "sweep.yaml"))
    parser.add_argument("--results", default=str(REPO / "docs" / "results" / "runs"))
    parser.add_argument("--cost", default=str(REPO / "docs" / "results" / "cost.json"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results.md"))
    parser.add_argument("--lm_config", default=str(REPO / "benchmarks" / "lm_sweep.yaml"))
    parser.add_argument("--lm_results", default=str(REPO / "docs" / "results" / "lm_runs"))
    args = parser.parse_args(argv)

    sweep = yaml.safe_load(Path(args.config).read_text())
    records = load_results(Path(args.results))
    out = Path(args.out)
    png_dir = out.parent / "results"
    png_dir.mkdir(parents=True, exist_ok=True)
    tasks, optimizers = sweep["tasks"], sweep["optimizers"] + list(sweep.get("variants", {}))

    n_tune = sum(len(expand(stage)) for o in sweep["optimizers"] for stage in grid_stages(sweep, o)) * len(tasks)
    lines = ["# Results: AdaSAM against SGD, AdamW, AMSGrad and SAM on GLUE and in LLM fine-tuning", "",
             "Generated by `python -m benchmarks.make_report` from the JSON under `docs/results/`; "
             "do not edit by hand.",
             f"{len(records)} runs stored (the full sweep is {n_tune} tuning runs + final seeds).", ""]
    accuracy, summary = accuracy_section(records, sweep, tasks, optimizers)
    lines += accuracy
    lines += curves_section(records, sweep, tasks, optimizers, png_dir)
    lines += cost_section(Path(args.cost))
    lines += modes_cost_section(Path(args.cost).parent / "sam_modes_cost.json")
    lines += lm_cost_section(Path(args.cost).parent / "lm_cost.json")
    lines += smollm2_cost_section(Path(args.cost).parent / "lm_cost_smollm2.json")
    lines += fsdp_cost_section(Path(args.cost).parent / "fsdp_cost.json")
    zero_shot = Path(args.cost).parent / "lm_zero_shot_smollm2" / "results.json"
    lines += zero_shot_section(zero_shot)
    lines += statistics_section(summary, tasks)
    lines += modes_accuracy_section(summary, sweep, tasks)
    lm_sweep = yaml.safe_load(Path(args.lm_config).read_text())
    lines += lm_experiment_section(lm_sweep, load_results(Path(args.lm_results)), zero_shot,
                                   Path(args.cost).parent / "lm_cost_smollm2.json", png_dir)
    lines += ["## GPU rows (roberta-base)", "", "Not run: no GPU was lent to the sessions that ran this sweep.", "",
              "## 6. Commands", "", "```bash",
              "python -m benchmarks.glue_sweep --config benchmarks/sweep.yaml --data_dir ../shared/glue",
              "python -m benchmarks.optimizer_cost --json docs/results/cost.json",
              "python -m benchmarks.sam_modes_cost --json docs/results/sam_modes_cost.json",
              "python -m benchmarks.lm_cost --json docs/results/lm_cost.json",
              "python -m benchmarks.lm_cost --preset smollm2 --dtype float32 --batch 4 --seq 256 "
              "--json docs/results/lm_cost_smollm2.json",
              ZERO_SHOT_COMMAND,
              "python -m benchmarks.lm_sweep --config benchmarks/lm_sweep.yaml",
              "python -m benchmarks.fsdp_cost --json docs/results/fsdp_cost.json",
              "python -m benchmarks.make_report", "```", ""]
    lines += runs_section(records, sweep, tasks)
    out.write_text("\n".join(lines))
    print(f"wrote {out} ({len(records)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
