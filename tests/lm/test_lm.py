"""The LLM path: causal LMs, LoRA, bf16, and `scripts/finetune_lm.py`, on a tiny random Llama.

The exactness tests compare against tests/helpers/tiny_lm.py's float64 reference: the mean over every label token of the
GA window, written from its definition. The micro-batches of a window hold very different token counts (5 vs 23),
so a mean per micro-batch lands far off, and SAM over plain SGD (scale-sensitive) catches a k x loss scale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, DataCollatorForSeq2Seq

from adasam_hf import SAM, AdaSAM, SAMTrainer, SAMTrainingArguments
from adasam_hf.app.models import resolve_model_path
from adasam_hf.lm import finetune_lm, main, parse_args
from adasam_hf.lm.data import IGNORE_INDEX, format_prompt, tokenize_instructions
from tests.helpers.distributed import torchrun
from tests.helpers.tiny_lm import UnevenLMDataset, causal_lm_reference, pad_collate, tiny_llama, window_loss
from tests.helpers.training import CountForwards

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and the tests then share a busy machine gracefully."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_args(tmp_path, micro=2, ga=2, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=micro, gradient_accumulation_steps=ga,
        max_steps=STEPS, learning_rate=0.01, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=0.0, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0,
        disable_tqdm=True, train_sampling_strategy="sequential", optimizer="adasam", sam_rho=0.05,
        adam_epsilon=1e-4,  # keeps AdaSAM's near-sign step smooth where a gradient is ~0: the loss is float32 math
    )
    return SAMTrainingArguments(**{**base, **kw})


def max_error(model, expected: dict) -> float:
    got = dict(model.named_parameters())
    return max((got[n].detach().double() - w).abs().max().item() for n, w in expected.items())


# ------------------------------------------------------------------------- GA exactness for a causal LM


def test_micro_batches_hold_uneven_token_counts():
    data = UnevenLMDataset()
    counts = [int((pad_collate([data[i], data[i + 1]])["labels"][:, 1:] != IGNORE_INDEX).sum()) for i in (0, 2)]
    assert counts == [5, 23]


@pytest.mark.parametrize("micro,ga", [(4, 1), (2, 2), (1, 4), (2, 3)])
def test_adasam_causal_lm_ga_equals_the_window_token_mean(tmp_path, micro, ga):
    data = UnevenLMDataset()
    batch = micro * ga
    expected = causal_lm_reference(tiny_llama(), data, optimizer="adasam", steps=STEPS, batch=batch, lr=0.01,
                                   rho=0.05, eps=1e-4)
    model = tiny_llama()
    forwards = CountForwards(model)
    trainer = SAMTrainer(model=model, args=make_args(tmp_path, micro, ga), train_dataset=data,
                         data_collator=pad_collate)
    trainer.train()
    # The loss is float32 inside transformers (it upcasts logits with .float()), so ~1e-7, not 1e-12; the weights
    # move by ~0.1, and a per-micro-batch mean is off by ~0.2 (test_the_reference_catches_...).
    assert max_error(model, expected) < 5e-6
    assert forwards.n == 2 * ga * STEPS
    # The logged loss is the window's token mean too (at the initial weights for step 0).
    start = tiny_llama()
    names, ws = zip(*[(n, p.detach()) for n, p in start.named_parameters()])
    first = window_loss(start, names, ws, [data[i] for i in range(batch)]).item()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(first, rel=1e-6)
    assert not trainer.sam_optimizer.is_perturbed


def sam_sgd_trainer(cls, tmp_path, model, data):
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5)  # plain SGD: a loss scale shows
    return cls(model=model, args=make_args(tmp_path, 2, 2), train_dataset=data, data_collator=pad_collate,
               optimizers=(sam, None))


def sgd_expected(data):
    return causal_lm_reference(tiny_llama(), data, optimizer="sam-sgd", steps=STEPS, batch=4, lr=0.5, rho=0.05)


def test_sam_sgd_causal_lm_ga_has_the_exact_loss_scale(tmp_path):
    data = UnevenLMDataset()
    model = tiny_llama()
    sam_sgd_trainer(SAMTrainer, tmp_path, model, data).train()
    assert max_error(model, sgd_expected(data)) < 1e-7


class PerMicroBatchMean(SAMTrainer):
    """Drops num_items_in_batch: each micro-batch's loss is its own token mean, divided by GA."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        return super().training_step(model, inputs, None)


class DoubledLoss(SAMTrainer):
    """A 2x loss scale (the GA-2 slip of a loss divided by the wrong count)."""

    def compute_loss(self, *args, **kwargs):
        return 2 * super().compute_loss(*args, **kwargs)


@pytest.mark.parametrize("wrong", [PerMicroBatchMean, DoubledLoss])
def test_the_reference_catches_a_per_micro_batch_mean_and_a_k_times_scale(tmp_path, wrong):
    data = UnevenLMDataset()
    model = tiny_llama()
    sam_sgd_trainer(wrong, tmp_path, model, data).train()
    assert max_error(model, sgd_expected(data)) > 1e-2


def test_torchrun_two_processes_equal_the_global_token_mean(tmp_path):
    """DDP, 2 CPU processes x batch 2 with 5 and 23 label tokens: the step is the one of the 4-example token mean."""
    proc = torchrun("ddp_lm_worker", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    data = UnevenLMDataset()
    references = {
        "adasam": (causal_lm_reference(tiny_llama(), data, optimizer="adasam", steps=STEPS, batch=4, lr=0.01,
                                       rho=0.05, eps=1e-4), 5e-6),
        "sam-sgd": (sgd_expected(data), 1e-7),
    }
    for name, (expected, tol) in references.items():
        for n, w in expected.items():
            assert torch.equal(ranks[0][name][n], ranks[1][name][n]), (name, n)
            assert (ranks[0][name][n] - w).abs().max().item() < tol, (name, n)


# -------------------------------------------------------------------------------------------- LoRA, bf16


def lora_llama(dtype=torch.float32):
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(tiny_llama(dtype=dtype), config)


def test_lora_optimizer_state_and_saved_copy_are_adapter_sized(tmp_path):
    model = lora_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SAMTrainer(model=model, args=make_args(tmp_path, max_steps=2), train_dataset=UnevenLMDataset(),
                         data_collator=pad_collate)
    trainer.train()

    adapters = {p for n, p in model.named_parameters() if p.requires_grad}
    n_adapter = sum(p.numel() for p in adapters)
    # r = 4 on q_proj (16 -> 16) and v_proj (16 -> 8) of 2 layers: A is r x in, B is out x r: 4 * (32 + 24) * 2
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad) and n_adapter == 448
    sam = trainer.sam_optimizer
    assert {p for g in sam.param_groups for p in g["params"]} == adapters
    assert set(sam.state) == adapters and set(sam._saved) == adapters
    moments = [t for s in sam.state.values() for k, t in s.items() if k != "step"]  # m, v, v_hat per tensor
    assert sum(t.numel() for t in moments) == 3 * n_adapter and len(moments) == 3 * len(adapters)
    assert sum(t.numel() for t in sam._saved.values()) == n_adapter
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n  # the base model, bit for bit


@pytest.mark.parametrize("how", ["autocast", "bf16 weights", "lora on bf16 weights"])
def test_bf16_trains(tmp_path, how):
    model = lora_llama(torch.bfloat16) if how.startswith("lora") else tiny_llama(
        dtype=torch.float32 if how == "autocast" else torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # AdaSAM's first steps are ~3 lr per weight (eps 1e-8: sign-like), above bfloat16's spacing at 1.0 (the norms'
    # weights), 2^-7; the first step is the base step here if the ascent is lost (test_the_ascent_moves_...).
    args = make_args(tmp_path, bf16=how == "autocast", max_steps=2, learning_rate=1e-2, adam_epsilon=1e-8)
    out = SAMTrainer(model=model, args=args, train_dataset=UnevenLMDataset(), data_collator=pad_collate).train()
    assert torch.isfinite(torch.tensor(out.training_loss))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in trained)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_ascent_moves_bf16_weights(tmp_path):
    """Every element whose e(w) is above bf16 resolution moves (torch 2.13's CPU fused SGD would
    leave whole SIMD blocks unchanged); smaller ones round away, as they must in bf16."""
    model = tiny_llama(dtype=torch.bfloat16)
    opt = AdaSAM(model.parameters(), lr=1e-3, rho=0.05)
    batch = pad_collate([UnevenLMDataset()[i] for i in range(4)])
    model(**batch).loss.backward()
    before = [p.detach().double() for p in model.parameters()]
    grads = [p.grad.double() for p in model.parameters()]
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    opt.perturb()
    resolvable = 0
    for p, w, g in zip(model.parameters(), before, grads):
        e = 0.05 * g / norm
        big = e.abs() > 2 * torch.finfo(torch.bfloat16).eps * w.abs().clamp(min=1e-3)
        resolvable += int(big.sum())
        assert torch.all(p.detach().double()[big] != w[big])
    opt.restore()
    assert resolvable > 1000  # the check covers most of the model, not a handful of elements


# ------------------------------------------------------------------------------------ the data and the script


def write_instructions(path: Path, n: int = 24) -> Path:
    """Records the tiny model can learn within a few steps: short, repetitive answers."""
    records = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
               for a in range(4) for b in range(n // 8)]
    records += [{"instruction": "Name the colour.", "input": f"The sky on clear day {i}.", "output": "Blue."}
                for i in range(n - len(records))]
    path.write_text(json.dumps(records, indent=1))
    return path


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))


def test_tokenization_labels_only_the_response(tmp_path, minilm_tokenizer):
    import datasets

    tok = minilm_tokenizer
    records = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "Five."},
               {"instruction": "Say hi.", "input": "", "output": "Hi there."},
               {"instruction": "word " * 80, "input": "", "output": "Lost to truncation."}]
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_list(records)})
    encoded = tokenize_instructions(raw, tok, max_seq_length=64)["train"]
    assert len(encoded) == 2  # the third's prompt fills max_seq_length: no response token, dropped
    for record, example in zip(records, encoded):
        prompt = tok(format_prompt(record["instruction"], record["input"]), add_special_tokens=False)["input_ids"]
        response = tok(record["output"], add_special_tokens=False)["input_ids"]
        assert example["input_ids"] == [tok.cls_token_id, *prompt, *response, tok.sep_token_id]
        assert example["labels"] == [IGNORE_INDEX] * (1 + len(prompt)) + [*response, tok.sep_token_id]
    assert "### Input:\n2 and 3" in format_prompt("x", "2 and 3") and "### Input" not in format_prompt("x", "")

    batch = DataCollatorForSeq2Seq(tok, label_pad_token_id=IGNORE_INDEX)([dict(e) for e in encoded])
    short = int(batch["attention_mask"][1].sum())
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, short:] == tok.pad_token_id).all()


def test_finetune_lm_loss_decreases_on_an_instruction_file(tmp_path):
    data = write_instructions(tmp_path / "train.json")
    out = tmp_path / "run"
    results = finetune_lm(*parse_args([
        "--train_file", str(data), "--output_dir", str(out), "--max_steps", "16", "--learning_rate", "3e-3",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
        "--report_to", "none", "--validation_split_percentage", "10",
    ]))
    assert results == json.loads((out / "results.json").read_text())
    losses = [h["loss"] for h in results["log_history"] if "loss" in h]
    assert len(losses) == 16 and losses[-1] < 0.5 * losses[0], losses
    assert results["eval_records"] == 2 and results["train_records"] == 22
    assert results["perplexity"] == pytest.approx(2.718281828459045 ** results["eval_loss"])
    assert results["optimizer"] == "adasam" and results["trainable_params"] == results["params"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_finetune_lm_lora_on_a_bf16_base_with_a_yaml_config(tmp_path):
    data = write_instructions(tmp_path / "train.jsonl", n=8)
    data.write_text("\n".join(json.dumps(r) for r in json.loads(data.read_text())))  # JSON Lines
    config = tmp_path / "lora.yaml"
    config.write_text("lora_r: 4\nmodel_dtype: bfloat16\noptimizers:\n  sam: {learning_rate: 0.05}\n")
    model_args, data_args, training_args = parse_args([
        "--config", str(config), "--optimizer", "sam", "--train_file", str(data), "--output_dir", str(tmp_path / "o"),
        "--max_steps", "2", "--report_to", "none", "--validation_split_percentage", "0", "--eval_strategy", "no",
    ])
    assert (model_args.lora_r, model_args.model_dtype, training_args.learning_rate) == (4, "bfloat16", 0.05)
    results = finetune_lm(model_args, data_args, training_args)
    # r = 4 on q_proj (64 -> 64) and v_proj (64 -> 32) of tiny-llama's 2 layers: 4 * (128 + 96) * 2
    assert results["trainable_params"] == 1792 and results["lora_r"] == 4
    assert (results["trainable_dtype"], results["frozen_dtype"]) == ("float32", "bfloat16")
    assert torch.isfinite(torch.tensor(results["train_loss"])) and "eval_loss" not in results
    assert (tmp_path / "o" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("argv,fragment", [
    (["--train_file", "{tmp}/missing.json"], "data file not found: {tmp}/missing.json"),
    (["--train_file", "{tmp}/train.csv"], "unsupported data file '{tmp}/train.csv': expected one of .json, .jsonl"),
    (["--train_file", "{tmp}/no_output.json"], "no 'output' field; a record needs 'instruction', 'output'"),
    (["--train_file", "{tmp}/bad.json"], "cannot read {tmp}/bad.json as JSON or JSON Lines: JSON parse error"),
    (["--train_file", "{tmp}/train.json", "--lora_r", "-1"], "invalid lora_r: -1 (must be an integer >= 0"),
    (["--train_file", "{tmp}/train.json", "--lora_r", "2", "--lora_target_modules", "qproj"],
     "'qproj' is not a linear layer of 'tiny-llama' (choose from: all-linear, down_proj, gate_proj,"),
    (["--train_file", "{tmp}/train.json", "--optimizer", "adamx"], "'adamx' (choose from: adamw, adasam,"),
    (["--train_file", "{tmp}/train.json", "--model_dtype", "float8"], "invalid choice: 'float8' (choose from"),
    (["--train_file", "{tmp}/train.json", "--validation_split_percentage", "0"], "needs evaluation records"),
    (["--train_file", "{tmp}/train.json", "--config", "{tmp}/bad.yaml"], "bad.yaml:1: unknown key 'lora_rank'"),
    ([], "no data given: pass --train_file"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, fragment):
    write_instructions(tmp_path / "train.json", n=8)
    (tmp_path / "no_output.json").write_text(json.dumps([{"instruction": "x", "response": "y"}]))
    (tmp_path / "bad.yaml").write_text("lora_rank: 8\n")
    (tmp_path / "bad.json").write_text("{not json")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main([*argv, "--output_dir", str(tmp_path / "o"), "--report_to", "none", "--max_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("finetune_lm.py: error: "), err
    assert fragment.format(tmp=tmp_path) in err, err


@pytest.mark.slow
def test_the_script_runs_and_fails_cleanly(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "finetune_lm.py"), "--train_file",
                           str(tmp_path / "nope.json")], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"finetune_lm.py: error: data file not found: {tmp_path / 'nope.json'}"]


# ------------------------------------------------------------------------------------------- the benchmark


def test_lm_cost_benchmark_smoke():
    """benchmarks/lm_cost.py's worker, one timed step of the small preset in this process, and its table."""
    from benchmarks import lm_cost

    row = lm_cost.worker("small", "lora", "adasam", steps=1, threads=1, batch=1, seq=16, dtype="bfloat16", lora_r=4)
    assert (row["trainable_dtype"], row["frozen_dtype"]) == ("float32", "bfloat16")
    assert row["held_param_sets"] == pytest.approx(4.0, rel=1e-3)  # m, v, v_hat and the saved copy (+ step scalars)
    assert len(row["step_times"]) == 1 and row["step_s"] > 0 and row["peak_rss_gb"] > 0
    report = {"preset": "small", "batch": 1, "seq": 16, "threads": 1, "cpu": "test",
              "runs": [{"mode": "lora", "optimizers": {"adamw": dict(row, step_s=1.0, peak_rss_gb=2.0),
                                                       "adasam": dict(row, step_s=2.5, peak_rss_gb=2.2)}}]}
    table = lm_cost.format_table(report)
    assert "| adasam | 2.500 | 2.50 | 2.20 | 1.10 |" in table
