"""The configs/ YAML files and the CLI's argument handling: layers and precedence, validation, one-line errors.

Expected values are read from the YAML files with plain `yaml.safe_load` (not the loader under test), and bad
input goes through `main([...])` in-process (fast) and, for a few cases, through the real script.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from adasam_hf import list_optimizers
from adasam_hf.app.errors import ConfigError
from adasam_hf.app.parsing import CONFIG_DIR, load_yaml
from adasam_hf.glue import build_parser, main, parse_args
from adasam_hf.glue.config import resolve_config
from adasam_hf.glue.tasks import GLUE_TASKS
from adasam_hf.optim.factory import get_optimizer_spec

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "finetune.py"
DEFAULTS = yaml.safe_load((REPO / "configs" / "defaults.yaml").read_text())


def task_yaml(task: str) -> dict:
    return yaml.safe_load((REPO / "configs" / "tasks" / f"{task}.yaml").read_text())


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Each test in its own cwd (default output dirs land there) and without the caller's $GLUE_DIR."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLUE_DIR", raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- the files


def test_config_dir_is_the_repo_configs_folder():
    assert CONFIG_DIR == REPO / "configs"
    assert sorted(p.stem for p in (CONFIG_DIR / "tasks").glob("*.yaml")) == sorted(GLUE_TASKS)


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_task_config_holds_training_defaults_and_no_task_facts(task):
    data = task_yaml(task)
    assert data["task"] == task
    # The facts live in one place, the task table (GLUE_TASKS): a file that states one is refused (below).
    assert not set(data) & {"text_columns", "label_names", "metrics", "metric_for_best_model"}
    for key in ("max_seq_length", "num_train_epochs", "per_device_train_batch_size", "warmup_steps"):
        assert key in data, key
    assert not set(data) & set(DEFAULTS), "a task file repeats a shared default"


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_task_config_resolves_for_every_optimizer(task):
    parser = build_parser()
    for optimizer in list_optimizers():
        settings = resolve_config(parser, task, optimizer)
        assert settings["task"] == task and settings["optimizer"] == optimizer
        assert settings["learning_rate"] == float(DEFAULTS["optimizers"][optimizer]["learning_rate"])
        if get_optimizer_spec(optimizer).sharpness_aware:
            assert settings["sam_rho"] > 0
    # The merged settings make valid arguments (TrainingArguments checks e.g. load_best_model_at_end).
    model_args, data_args, training_args = parse_args(["--task", task])
    assert data_args.max_seq_length == task_yaml(task)["max_seq_length"]
    assert training_args.metric_for_best_model == GLUE_TASKS[task].metric_for_best_model


def test_the_optimizer_table_covers_every_registered_optimizer():
    assert sorted(DEFAULTS["optimizers"]) == list_optimizers()


def test_a_task_file_that_states_a_task_fact_is_refused(tmp_path):
    configs = shutil.copytree(CONFIG_DIR, tmp_path / "configs")
    path = configs / "tasks" / "rte.yaml"
    path.write_text(path.read_text() + "text_columns: [sentence1, hypothesis]\n")
    with pytest.raises(ConfigError) as err:
        resolve_config(build_parser(), "rte", "adasam", config_dir=configs)
    message = str(err.value)
    assert str(path) in message and "text_columns" in message and "GLUE_TASKS" in message
    assert "['sentence1', 'sentence2']" in message  # the table's value, where it lives


# -------------------------------------------------------------------------------------------- precedence


def test_defaults_come_from_defaults_yaml_then_the_task_file():
    _, data_args, args = parse_args(["--task", "rte"])
    rte = task_yaml("rte")
    assert args.optimizer == DEFAULTS["optimizer"]
    assert args.learning_rate == float(DEFAULTS["optimizers"][args.optimizer]["learning_rate"])
    assert args.sam_rho == DEFAULTS["optimizers"][args.optimizer]["sam_rho"]
    assert args.weight_decay == DEFAULTS["weight_decay"]
    assert args.per_device_train_batch_size == rte["per_device_train_batch_size"]
    assert args.warmup_steps == rte["warmup_steps"]
    assert data_args.max_seq_length == rte["max_seq_length"]
    assert args.adam_beta2 == 0.999  # in no file: the dataclass default
    assert args.logging_nan_inf_filter is False and args.load_best_model_at_end is True
    assert args.use_cpu is True  # no GPU here


def test_cli_over_user_yaml_over_task_yaml_over_defaults(tmp_path):
    user = write(tmp_path / "mine.yaml", """
        per_device_train_batch_size: 8
        max_seq_length: 64
        weight_decay: 0.0
        learning_rate: 1.0e-3
        optimizers:
          adasam: {learning_rate: 1.0e-4, sam_rho: 0.2}
        """.replace("\n        ", "\n"))
    _, data_args, args = parse_args(["--task", "rte", "--config", str(user)])
    assert (args.per_device_train_batch_size, data_args.max_seq_length, args.weight_decay) == (8, 64, 0.0)
    assert (args.learning_rate, args.sam_rho) == (1e-4, 0.2)  # the optimizer's entry beats the file's top level

    _, data_args, args = parse_args(["--task", "rte", "--config", str(user), "--optimizer", "sgd"])
    assert args.learning_rate == 1e-3  # no sgd entry in mine.yaml: its top level beats defaults.yaml's sgd entry

    _, data_args, args = parse_args(["--task", "rte", "--config", str(user), "--per_device_train_batch_size", "4",
                                     "--learning_rate", "3e-4", "--sam_rho", "0.5"])
    assert (args.per_device_train_batch_size, args.learning_rate, args.sam_rho) == (4, 3e-4, 0.5)
    assert data_args.max_seq_length == 64 and data_args.config == str(user)


def test_the_user_file_may_choose_task_and_optimizer(tmp_path):
    user = write(tmp_path / "mine.yaml", "task: mrpc\noptimizer: sgd\n")
    _, data_args, args = parse_args(["--config", str(user)])
    assert (data_args.task, args.optimizer) == ("mrpc", "sgd")
    assert args.learning_rate == float(DEFAULTS["optimizers"]["sgd"]["learning_rate"])
    assert args.metric_for_best_model == "f1"
    _, data_args, args = parse_args(["--config", str(user), "--task", "cola", "--optimizer", "adamw"])
    assert (data_args.task, args.optimizer) == ("cola", "adamw")


def test_default_output_dir_names_task_optimizer_and_time():
    _, _, args = parse_args(["--task", "SST-2", "--optimizer", "sam"])
    assert re.fullmatch(r"runs/sst2-sam-\d{8}-\d{6}", args.output_dir.replace(os.sep, "/"))
    _, _, args = parse_args(["--task", "rte", "--output_dir", "elsewhere"])
    assert args.output_dir == "elsewhere"


def test_yaml_strings_take_the_flag_type():
    # PyYAML reads 5e-5 as a string; it must still become the float the command line would give.
    layer = load_yaml(write(Path("x.yaml"), "learning_rate: 5e-5\nnum_train_epochs: 2\n"))
    assert layer.data["learning_rate"] == "5e-5"
    _, _, args = parse_args(["--task", "rte", "--config", "x.yaml"])
    assert args.learning_rate == 5e-5 and args.num_train_epochs == 2.0


# -------------------------------------------------------------------------------------- YAML validation


@pytest.mark.parametrize("text,fragments", [
    ("task: rte\nlearnin_rate: 1.0e-4\n", [":2:", "unknown key 'learnin_rate'", "did you mean 'learning_rate'"]),
    ("optimizers:\n  adasam: {learning_rat: 1}\n", [":2:", "'learning_rat'", "'learning_rate'"]),
    ("optimizers:\n  adasma: {learning_rate: 1}\n", [":2:", "unknown optimizer 'adasma'", "adamw, adasam"]),
    ("task: rtee\n", [":1:", "unknown task 'rtee'", "cola, mnli, mrpc, qnli, qqp, rte, sst2, stsb, wnli"]),
    ("seed: [1\n", [":2:", "malformed YAML", "at line 1"]),
    ("seed: 1\n  learning_rate: 2\n", [":2:", "malformed YAML"]),
    ("seed: 1\nseed: 2\n", [":2:", "duplicate key 'seed'"]),
    ("- seed\n", ["expected a mapping"]),
    ("per_device_train_batch_size: 3.5\n", [":1:", "per_device_train_batch_size", "3.5"]),
    ("learning_rate: fast\n", [":1:", "learning_rate", "'fast'"]),
    ("lr_scheduler_type: bogus\n", [":1:", "'bogus'", "linear, cosine"]),
    ("label_names: [yes, no]\n", [":1:", "label_names", "fact of the task", "entailment"]),
    ("metric_for_best_model: f1\n", [":1:", "'f1'", "accuracy, loss"]),
    ("config: other.yaml\n", [":1:", "unknown key 'config'"]),
])
def test_bad_yaml_is_one_line_naming_file_line_and_value(tmp_path, capfd, text, fragments):
    path = write(tmp_path / "bad.yaml", text)
    assert main(["--task", "rte", "--config", str(path)]) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"finetune.py: error: {path}")
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_config_file(capfd):
    assert main(["--task", "rte", "--config", "nope.yaml"]) == 2
    assert "config file not found: nope.yaml" in capfd.readouterr().err


# --------------------------------------------------------------------------------------- bad command line


def rte_dir(root: Path, header="index\tsentence1\tsentence2\tlabel", label="entailment") -> Path:
    rows = [header, f"0\tA man sleeps.\tA man is awake.\t{label}", "1\tIt rains.\tIt is wet.\tnot_entailment"]
    for name in ("train.tsv", "dev.tsv"):
        write(root / "RTE" / name, "\n".join(rows) + "\n")
    return root


BAD_INPUT = {
    "unknown task": (["--task", "rtee"], ["'rtee'", "cola, mnli, mrpc"]),
    "unknown optimizer": (["--task", "rte", "--optimizer", "adasma"], ["'adasma'", "adamw, adasam, adasam-adaptive"]),
    "rho zero": (["--task", "rte", "--sam_rho", "0"], ["rho: 0.0", "must be > 0"]),
    "rho negative": (["--task", "rte", "--sam_rho", "-0.05"], ["rho: -0.05", "must be > 0"]),
    "no task": ([], ["no task given", "--task", "cola, mnli"]),
    "missing data_dir": (["--task", "rte", "--data_dir", "no/such/dir"], ["no/such/dir", "RTE/train.tsv"]),
    "bad flag value": (["--task", "rte", "--max_steps", "many"], ["--max_steps", "'many'"]),
    "invalid choice": (["--task", "rte", "--lr_scheduler_type", "bogus"], ["'bogus'", "'linear'"]),
    "unknown flag": (["--task", "rte", "--learnin_rate", "1"], ["unrecognized arguments: --learnin_rate 1"]),
    "bad max_seq_length": (["--task", "rte", "--max_seq_length", "0"], ["max_seq_length: 0", "positive"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(capfd, case):
    argv, fragments = BAD_INPUT[case]
    assert main(argv) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("finetune.py: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("make,fragments", [
    (lambda root: root, ["GLUE task folder not found", "RTE"]),  # data_dir exists, no task folder
    (lambda root: rte_dir(root, header="index\tsentence1\thypothesis\tlabel"), ["no column 'sentence2'", "hypothesis"]),
    (lambda root: rte_dir(root, label="maybe"), ["label 'maybe'", "'entailment', 'not_entailment'", ":2:"]),
])
def test_bad_data_is_one_line_and_exit_2(tmp_path, capfd, make, fragments):
    root = make(tmp_path / "glue")
    root.mkdir(exist_ok=True)
    assert main(["--task", "rte", "--data_dir", str(root)]) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("finetune.py: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_glue_dir_env_is_the_data_dir_default(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "from-env"))
    assert main(["--task", "rte"]) == 2
    assert f"GLUE data directory not found: {tmp_path / 'from-env'}" in capfd.readouterr().err


def test_unreachable_hub_says_how_to_use_local_files(monkeypatch, capfd):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert main(["--task", "cola"]) == 2  # not embedded: the Hub is its last source
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and "Hub is unreachable" in err and "--data_dir DIR" in err and "GLUE_DIR" in err
    assert "(embedded, offline: mrpc, rte)" in err


def test_a_model_that_cannot_be_loaded_is_one_line(tmp_path, capfd):
    missing = tmp_path / "no-model"
    assert main(["--task", "rte", "--model_name_or_path", str(missing)]) == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"finetune.py: error: cannot load model '{missing}'"), lines
    assert "--model_name_or_path minilm-l6" in lines[0]


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--task" in out and "--sam_rho" in out and "--max_steps" in out


# -------------------------------------------------------------------------------- the real script, exit 2


@pytest.mark.slow
@pytest.mark.parametrize("argv,env,fragment", [
    (["--task", "rte", "--optimizer", "adasma"], {}, "Unknown optimizer: 'adasma' (choose from: adamw,"),
    (["--config", "CONFIG"], {}, "bad.yaml:4: malformed YAML: expected ',' or ']', but got '<stream end>' "
                                   "(while parsing a flow sequence at line 3)"),
    (["--task", "cola"], {"HF_HUB_OFFLINE": "1"}, "pass --data_dir DIR (or set GLUE_DIR)"),
])
def test_script_bad_input_exit_2_one_line_no_traceback(tmp_path, argv, env, fragment):
    config = write(tmp_path / "bad.yaml", "task: rte\nseed: 1\nlearning_rate: [1\n")
    argv = [str(config) if a == "CONFIG" else a for a in argv]
    env = {k: v for k, v in os.environ.items() if k != "GLUE_DIR"} | env
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("finetune.py: error: ") and fragment in lines[0]
