"""End to end: `scripts/finetune.py` on the real GLUE files, as a subprocess (and under torchrun), and `finetune`
called directly. Metrics in results.json are recomputed here from the saved predictions with scikit-learn / SciPy,
and the labels in the prediction files are checked against the TSV files read here with `csv`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score

from adasam_hf import SAMTrainer, SAMTrainingArguments
from adasam_hf.glue import finetune, parse_args
from adasam_hf.trainer import StopOnNonFiniteLoss, TrainingDivergedError

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "finetune.py"
QUICK = ["--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "64", "--per_device_train_batch_size",
         "8", "--max_seq_length", "64"]

pytestmark = pytest.mark.slow


def run_script(args, cwd, launcher=(sys.executable,), timeout=300, env=None):
    env = {k: v for k, v in os.environ.items() if k != "GLUE_DIR"} | {"OMP_NUM_THREADS": "1"} | (env or {})
    proc = subprocess.run([*launcher, str(SCRIPT), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc


def read_tsv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def dev_labels(glue: Path, folder: str, column: str, names=None, n=None) -> list:
    rows = read_tsv(glue / folder / "dev.tsv")[:n]
    return [names.index(r[column]) if names else r[column] for r in rows]


def check_predictions(out: Path, labels: list, prefix="eval") -> tuple[np.ndarray, np.ndarray]:
    rows = read_tsv(out / f"{prefix}_predictions.tsv")
    assert [int(r["idx"]) for r in rows] == list(range(len(labels)))
    got_labels = [float(r["label"]) for r in rows]
    assert got_labels == [float(x) for x in labels]
    return np.array([float(r["prediction"]) for r in rows]), np.array(got_labels)


# ------------------------------------------------------------------------------------- the real script


def test_rte_with_the_packaged_model(tmp_path, embedded_glue):
    """The main command, shortened, as on a fresh clone: default model, default optimizer, default checkpointing and
    logging, and the embedded data (no --data_dir, no GLUE_DIR, no Hub)."""
    out = tmp_path / "out"
    proc = run_script(["--task", "rte", "--optimizer", "adasam", "--output_dir", out, *QUICK], cwd=tmp_path,
                      env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    assert (results["task"], results["optimizer"], results["model_name_or_path"]) == ("rte", "adasam", "minilm-l6")
    for key in ("eval_accuracy", "eval_loss", "train_loss", "train_runtime", "train_steps_per_second", "peak_rss_mb"):
        assert isinstance(results[key], float) and np.isfinite(results[key]), key
    assert results["world_size"] == 1 and results["device"] == "cpu" and results["peak_cuda_mb"] is None
    assert set(results["versions"]) >= {"torch", "transformers", "adasam_hf"}
    hp = results["hyperparameters"]
    assert (hp["learning_rate"], hp["sam_rho"], hp["max_steps"], hp["max_seq_length"]) == (2e-5, 0.05, 2, 64)
    assert hp["data_dir"] is None and hp["optimizer"] == "adasam"
    # Where the data came from, with the sha256 of each file read, computed here with hashlib.
    assert results["data_source"] == "embedded" and results["data_dir"] == str(embedded_glue)
    files = [embedded_glue / "RTE" / name for name in ("train.tsv", "dev.tsv")]
    assert results["data_files"] == {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    predictions, labels = check_predictions(
        out, dev_labels(embedded_glue, "RTE", "label", ["entailment", "not_entailment"], n=64))
    assert results["eval_accuracy"] == accuracy_score(labels, predictions)

    # The best model (the only checkpoint here) is saved with its tokenizer; TensorBoard has the run.
    state = json.loads((out / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    assert best.name == "checkpoint-2"
    saved, kept = load_file(out / "model.safetensors"), load_file(best / "model.safetensors")
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k]) for k in saved)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert (out / "tokenizer.json").is_file()
    assert list((out / "runs").rglob("events.out.tfevents.*"))


def test_mrpc_with_sam_on_a_tiny_model(tmp_path, embedded_glue, tiny_model_dir):
    out = tmp_path / "out"
    proc = run_script(["--task", "mrpc", "--optimizer", "sam", "--data_dir", embedded_glue, "--output_dir", out,
                       "--model_name_or_path", tiny_model_dir, *QUICK], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["hyperparameters"]["learning_rate"] == 2e-2 and results["hyperparameters"]["sam_rho"] == 0.05
    assert results["data_source"] == "data_dir"
    predictions, labels = check_predictions(out, dev_labels(embedded_glue, "MRPC", "Quality", n=64))
    assert results["eval_accuracy"] == accuracy_score(labels, predictions)
    assert results["eval_f1"] == f1_score(labels, predictions)
    assert json.loads((out / "trainer_state.json").read_text())["best_metric"] == results["eval_f1"]


def test_torchrun_two_processes(tmp_path, embedded_glue, tiny_model_dir):
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun not on PATH")
    proc = run_script(["--task", "rte", "--model_name_or_path", tiny_model_dir, *QUICK],
                      cwd=tmp_path, launcher=(torchrun, "--standalone", "--nproc_per_node", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = (tmp_path / "runs").iterdir()  # both processes agreed on the default output_dir
    assert re.fullmatch(r"rte-adasam-\d{8}-\d{6}", out.name)
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["hyperparameters"]["use_cpu"] is True  # without it, each process would train alone
    predictions, labels = check_predictions(
        out, dev_labels(embedded_glue, "RTE", "label", ["entailment", "not_entailment"], n=64))
    assert results["eval_accuracy"] == accuracy_score(labels, predictions)


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, embedded_glue, tiny_model_dir):
    # A warmup from 0 to an absurd learning rate: step 1 (lr 0) leaves the weights as they are; step 2 (lr 3.3e29)
    # blows them up to finite values whose outputs are NaN, so its checkpoint is refused (the loss of step 2, taken
    # before that update, was still finite), and the good checkpoint-1 is neither pruned nor replaced as the best.
    out = tmp_path / "out"
    proc = run_script(["--task", "rte", "--optimizer", "adamw", "--learning_rate", "1e30", "--output_dir", out,
                       "--model_name_or_path", tiny_model_dir, *QUICK, "--max_steps", "6", "--warmup_steps", "3",
                       "--save_strategy", "steps", "--save_steps", "1", "--eval_strategy", "steps", "--eval_steps",
                       "1", "--save_total_limit", "1", "--logging_steps", "100"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("finetune.py: error: training stopped at step 2: "), last
    assert "learning_rate 1e+30" in last and last.endswith(f"the last good checkpoint is {out / 'checkpoint-1'}")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / "results.json").exists()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # The named checkpoint is good: finite weights, and finite logits on the dev set, computed here.
    model = AutoModelForSequenceClassification.from_pretrained(out / "checkpoint-1").eval()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = read_tsv(embedded_glue / "RTE" / "dev.tsv")[:16]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tokenizer([r["sentence1"] for r in rows], [r["sentence2"] for r in rows], padding=True, truncation=True,
                      max_length=64, return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_do_predict_writes_glue_submission_files(tmp_path, embedded_glue, tiny_model_dir):
    glue = tmp_path / "glue" / "RTE"
    glue.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (glue / name).symlink_to(embedded_glue / "RTE" / name)
    dev = read_tsv(embedded_glue / "RTE" / "dev.tsv")[:10]  # the GLUE test layout: no label column
    (glue / "test.tsv").write_text("index\tsentence1\tsentence2\n" + "".join(
        f"{i}\t{r['sentence1']}\t{r['sentence2']}\n" for i, r in enumerate(dev)))
    out = tmp_path / "out"
    proc = run_script(["--task", "rte", "--data_dir", glue.parent, "--output_dir", out, "--model_name_or_path",
                       tiny_model_dir, *QUICK, "--do_predict", "--max_predict_samples", "7"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_tsv(out / "glue_submission" / "RTE.tsv")
    assert [r["index"] for r in rows] == [str(i) for i in range(7)]
    assert {r["prediction"] for r in rows} <= {"entailment", "not_entailment"}
    results = json.loads((out / "results.json").read_text())
    assert results["submission_files"] == [str(out / "glue_submission" / "RTE.tsv")]


class PoisonedLoss(SAMTrainer):
    """The loss of the third step is NaN, as a fp16 overflow or a bad batch would make it."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 2 else loss


def test_a_nan_loss_stops_training_before_any_checkpoint_holds_it(tmp_path):
    from tests.helpers.tiny import TinyDataset, tiny_bert

    guard = StopOnNonFiniteLoss()
    args = SAMTrainingArguments(
        output_dir=str(tmp_path), optimizer="adamw", learning_rate=1e-3, per_device_train_batch_size=8, max_steps=6,
        save_strategy="steps", save_steps=1, logging_steps=100, logging_nan_inf_filter=False, report_to="none",
        use_cpu=True, disable_tqdm=True,
    )
    trainer = PoisonedLoss(model=tiny_bert(), args=args, train_dataset=TinyDataset(), callbacks=[guard])
    trainer.train()
    assert trainer.state.global_step == 3
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    with pytest.raises(TrainingDivergedError) as err:
        guard.check(trainer)
    assert str(err.value) == (
        "training stopped at step 3: the training loss is nan, the weights are not finite (learning_rate 0.001 "
        f"too large?); the last good checkpoint is {tmp_path / 'checkpoint-2'}"
    )
    assert err.value.step == 3 and err.value.last_checkpoint == str(tmp_path / "checkpoint-2")


# ------------------------------------------------------------------------------- `finetune` called directly


def test_finetune_stsb_regression_in_process(tmp_path, glue_root, tiny_model_dir):
    args = parse_args(["--task", "stsb", "--data_dir", str(glue_root), "--output_dir", str(tmp_path / "out"),
                       "--model_name_or_path", str(tiny_model_dir), *QUICK, "--report_to", "none"])
    results = finetune(*args)
    assert results == json.loads((tmp_path / "out" / "results.json").read_text())
    scores = [float(np.float32(x)) for x in dev_labels(glue_root, "STS-B", "score", n=64)]  # float32, as on the Hub
    predictions, labels = check_predictions(tmp_path / "out", scores)
    assert results["eval_pearson"] == pearsonr(predictions, labels)[0]
    assert results["eval_spearmanr"] == spearmanr(predictions, labels)[0]
    assert results["hyperparameters"]["metric_for_best_model"] == "pearson"


def test_finetune_mnli_reports_both_dev_sets(tmp_path, tiny_model_dir):
    header = "index\tsentence1\tsentence2\tgold_label\n"
    labels = ["entailment", "neutral", "contradiction"]
    rows = "".join(f"{i}\tA man number {i} sleeps.\tSomeone {i} rests.\t{labels[i % 3]}\n" for i in range(12))
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        (tmp_path / "glue" / "MNLI").mkdir(parents=True, exist_ok=True)
        (tmp_path / "glue" / "MNLI" / name).write_text(header + rows)
    out = tmp_path / "out"
    results = finetune(*parse_args(["--task", "mnli", "--data_dir", str(tmp_path / "glue"), "--output_dir", str(out),
                                    "--model_name_or_path", str(tiny_model_dir), "--max_steps", "1",
                                    "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no",
                                    "--load_best_model_at_end", "false"]))
    for prefix in ("eval", "eval_mismatched"):
        predictions, got = check_predictions(out, [i % 3 for i in range(12)], prefix=prefix)
        assert results[f"{prefix}_accuracy"] == accuracy_score(got, predictions)


# ------------------------------------------------------------------------------- the README's example


def test_readme_subclassing_example_runs(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- example: subclass -->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README.md lost its subclassing example"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    first = namespace["trainer"].state.log_history[0]
    assert first["sam_perturbed_loss"] > 0 and first["sam_ascent_grad_norm"] > 0  # the SAM step ran
