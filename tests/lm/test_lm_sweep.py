"""The LLM experiment runner on a toy plan (tiny-llama, a few records): tuning on the held-out loss, the final runs
with benchmark scores, and resume."""

from __future__ import annotations

import json

import pytest
import yaml

from benchmarks import lm_sweep

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
        "final_eval": {"tasks": "openbookqa", "tasks_limit": 2, "tasks_before": False},
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
        assert "before" not in bench and bench["after"]["openbookqa"]["n"] == 2
    assert {r["config"].get("variant") for r in finals} == {None, "adasam-interval2"}
    assert lm_sweep.main(argv) == 0
    assert "0 run(s) executed, 7 already done" in capsys.readouterr().out
