"""The LLM experiment runner on a toy plan (tiny-llama, a few records): tuning on the held-out loss, the final runs
with benchmark scores, and resume."""

from __future__ import annotations

import json

import pytest
import yaml

from benchmarks import lm_report, lm_sweep

pytestmark = pytest.mark.slow


def test_toy_lm_sweep_tunes_on_held_out_loss_scores_the_finals_and_resumes(tmp_path, capsys):
    sweep = {
        "experiment": "toy",
        "optimizers": ["adamw", "adasam"],
        "tune_seed": 0,
        "seeds": [0],
        "common": {"model_name_or_path": "tiny-llama", "train_tasks": "openbookqa", "max_train_samples": 24,
                   "validation_split_percentage": 10, "max_eval_samples": 8, "max_steps": 2,
                   "per_device_train_batch_size": 4, "max_seq_length": 64},
        "grid": {"adamw": {"learning_rate": [1.0e-3, 1.0e-2]},
                 "adasam": [{"learning_rate": [1.0e-3], "sam_rho": [0.05]}, {"sam_rho": [0.5]}]},
        "variants": {"adasam-interval2": {"base": "adasam", "sam_interval": 2}},
        "final_eval": {"tasks": "openbookqa,boolq", "tasks_limit": 3, "tasks_subset_seed": 1, "tasks_before": False},
    }
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep))
    argv = ["--config", str(config), "--results", str(tmp_path / "runs"), "--scratch", str(tmp_path / "scratch")]
    assert lm_sweep.main(argv) == 0
    # tuning: 2 adamw + 2 adasam (lr stage, then rho); finals: adamw, adasam, the variant
    assert "7 run(s) executed, 0 already done" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs" / "toy").glob("*/*.json"))]
    tuning = [r for r in records if "eval_tasks" not in r["config"]]
    finals = [r for r in records if "eval_tasks" in r["config"]]
    assert len(tuning) == 4 and len(finals) == 3
    adamw = min((r for r in tuning if r["config"]["optimizer"] == "adamw"), key=lambda r: r["result"]["eval_loss"])
    final_adamw = next(r for r in finals if r["config"]["optimizer"] == "adamw")
    assert final_adamw["config"]["learning_rate"] == adamw["config"]["learning_rate"]  # the lowest held-out loss
    for r in finals:
        bench = r["result"]["benchmarks"]
        assert "before" not in bench and bench["after"]["openbookqa"]["n"] == 3
    assert {r["config"].get("variant") for r in finals} == {None, "adasam-interval2"}
    assert lm_sweep.main(argv) == 0
    assert "0 run(s) executed, 7 already done" in capsys.readouterr().out

    # The report: each final run's scores from its stored documents, differences paired on the same documents.
    # A zero-shot report in evaluate_lm.py's layout ({"documents": {task: ...}}), here built from the AdamW run's.
    zero_shot = {"limit": 3, "subset_seed": 1, "documents": {
        t: r["documents"] for t, r in final_adamw["result"]["benchmarks"]["after"].items()}}
    (tmp_path / "zero_shot.json").write_text(json.dumps(zero_shot))
    lines = lm_report.section(sweep, records, tmp_path / "zero_shot.json", tmp_path / "no-cost.json", tmp_path)
    text = "\n".join(lines)
    for r in finals:
        name = r["config"].get("variant", r["config"]["optimizer"])
        after = r["result"]["benchmarks"]["after"]
        assert after["openbookqa"]["documents"]["id"] == next(iter(finals))["result"]["benchmarks"]["after"][
            "openbookqa"]["documents"]["id"]  # the seeded subset: the same documents for every run
        row = next(line for line in lines if line.startswith(f"| {name} ("))
        cells = [c.strip() for c in row.split("|")[2:5]]
        expected = [100 * after["openbookqa"]["acc_norm"], 100 * after["boolq"]["acc"]]
        assert cells == [f"{v:.1f}" for v in expected] + [f"{sum(expected) / 2:.1f}"], row
    adamw_row = next(line for line in lines if line.startswith("| adamw ("))
    zero_row = next(line for line in lines if line.startswith("| SmolLM2-135M-Instruct, zero-shot |"))
    assert zero_row.split("|")[2:5] == adamw_row.split("|")[2:5]  # the same scores, read from the other layout
    adamw_after = final_adamw["result"]["benchmarks"]["after"]
    adasam_after = next(r for r in finals if r["config"]["optimizer"] == "adasam" and "variant" not in r["config"])[
        "result"]["benchmarks"]["after"]
    row = next(line for line in lines if line.startswith("| adasam − adamw (seed 0) |"))
    gain = 100 * (adasam_after["boolq"]["acc"] - adamw_after["boolq"]["acc"])
    assert row.split("|")[3].strip().startswith(f"{gain:+.1f} ["), row
    assert "| adasam-interval2 − adasam (seed 0) |" in text and "| adasam − sam" not in text  # no sam in this plan
    assert (tmp_path / "lm_curves_toy.png").stat().st_size > 10_000
    chosen = f"**learning_rate {final_adamw['config']['learning_rate']:g}** (chosen; learning_rate at the grid's edge)"
    assert chosen in text  # a grid of two: the choice is an edge, and the table says so
