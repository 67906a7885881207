"""The sweep runner on a 2-run toy grid: runs, resume skip, and the report made from its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks import glue_sweep, make_report, sweep_plan

pytestmark = pytest.mark.slow


def test_toy_sweep_resumes_and_reports(tmp_path, embedded_glue, tiny_model_dir, capsys):
    sweep = {
        "tasks": ["rte"],
        "optimizers": ["sgd", "adasam"],
        "tune_seed": 0,
        "seeds": [0],
        "common": {"model_name_or_path": str(tiny_model_dir), "max_seq_length": 32, "max_steps": 2,
                   "max_train_samples": 32, "max_eval_samples": 32, "per_device_train_batch_size": 8,
                   "logging_steps": 1},
        "grid": {"sgd": {"learning_rate": [0.01]},
                 # Two stages: rho 0.02 is tried at the lr chosen in stage one.
                 "adasam": [{"learning_rate": [1e-4], "sam_rho": [0.05]}, {"sam_rho": [0.02]}]},
        # A variant: AdaSAM at its tuned point with randomized switching, final seeds only.
        "variants": {"adasam-rst": {"base": "adasam", "sam_mode": "rst", "sam_rst_prob": 0.5}},
    }
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep))
    results = tmp_path / "runs"
    argv = ["--config", str(config), "--results", str(results), "--data_dir", str(embedded_glue),
            "--scratch", str(tmp_path / "scratch")]

    assert glue_sweep.main(argv) == 0
    stored = sorted(p for p in results.glob("rte/*/*.json") if p.parent.name != "adasam-rst")
    assert [p.parent.name for p in stored] == ["adasam", "adasam", "sgd"]
    adasam_points = sorted((r["config"]["learning_rate"], r["config"]["sam_rho"])
                           for r in map(json.loads, map(Path.read_text, stored[:2])))
    assert adasam_points == [(1e-4, 0.02), (1e-4, 0.05)]
    for path in stored:
        record = json.loads(path.read_text())
        assert path.stem == record["key"] == sweep_plan.run_key(record["config"])
        assert 0.0 <= record["result"]["eval_accuracy"] <= 1.0
        assert [h["step"] for h in record["result"]["log_history"] if "loss" in h] == [1, 2]  # for the curves
    # The final run at seed 0 is the tuning run itself: same configuration, same hash, not run twice.
    assert "4 run(s) executed, 2 already done" in capsys.readouterr().out
    variant = [json.loads(p.read_text()) for p in results.glob("rte/adasam-rst/*.json")]
    assert len(variant) == 1 and variant[0]["config"]["sam_mode"] == "rst"
    assert "--sam_rst_prob=0.5" in variant[0]["argv"]

    before = {p: p.stat().st_mtime_ns for p in stored}
    assert glue_sweep.main(argv) == 0  # everything is found by its hash and skipped
    assert "0 run(s) executed, 6 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stored} == before

    out = tmp_path / "docs" / "results.md"
    assert make_report.main(["--config", str(config), "--results", str(results), "--out", str(out),
                             "--cost", str(tmp_path / "no-cost.json")]) == 0
    report = out.read_text()
    records = sweep_plan.load_results(results)

    def final_of(opt):
        best = sweep_plan.best_point(records, sweep, "rte", opt, "accuracy")
        return next(r for r in records if r["config"] == sweep_plan.run_config(sweep, "rte", opt, 0, best))

    for opt in sweep["optimizers"]:
        tuned = [r["result"]["eval_accuracy"] for r in records
                 if r["config"]["optimizer"] == opt and "variant" not in r["config"]]
        assert final_of(opt)["result"]["eval_accuracy"] == max(tuned)  # the final setting is the best tuned one
        assert f"{100 * max(tuned):.2f} ± 0.00 (n=1)" in report, opt
    header = next(line for line in report.splitlines() if line.startswith("| task (metric)"))
    assert "| adasam-rst |" in header
    rst, full = (100 * r["result"]["eval_accuracy"] for r in (variant[0], final_of("adasam")))
    assert f"- rte: adasam-rst − adasam = {rst - full:+.2f} points (n=1 vs n=1)" in report
    assert (out.parent / "results" / "curves_rte.png").stat().st_size > 1000
    assert "Not measured yet" in report

    # Seeds still to run and runs stuck at the majority class are flagged, not hidden in a mean.
    sweep["seeds"] = [0, 1]
    config.write_text(yaml.safe_dump(sweep))
    sgd = final_of("sgd")
    path = results / "rte" / "sgd" / f"{sgd['key']}.json"
    path.write_text(json.dumps({**sgd, "result": {**sgd["result"], "eval_accuracy": 146 / 277}}))
    assert make_report.main(["--config", str(config), "--results", str(results), "--out", str(out),
                             "--cost", str(tmp_path / "no-cost.json")]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| rte (accuracy)"))
    assert "52.71 ± 0.00 (n=1 of 2)" in row and row.count("; 1 at majority") == 1
