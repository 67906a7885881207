"""The statistics of the LLM report (benchmarks.lm_report): the paired bootstrap and its verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.lm_report import (
    Experiment, difference_lines, loss_gaps, paired_bootstrap, seed_lines, training_losses, verdict,
)


def test_a_constant_difference_has_a_zero_width_interval():
    assert paired_bootstrap([np.full(50, 2.0)], resamples=200) == (2.0, 2.0, 2.0)


def test_the_interval_matches_the_normal_approximation_on_many_documents():
    """Per-document differences in {-1, 0, 1} (two models right or wrong on the same items): for n = 4000 the
    percentile interval is the mean ± 1.96 standard errors to within a few percent."""
    rng = np.random.default_rng(1)
    d = rng.choice([-1.0, 0.0, 1.0], size=4000, p=[0.15, 0.65, 0.20])
    mean, low, high = paired_bootstrap([d], resamples=4000, seed=3)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert mean == pytest.approx(d.mean())
    assert low == pytest.approx(d.mean() - half, abs=0.08 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.08 * half)


def test_strata_are_averaged_as_benchmarks_and_resampled_apart():
    """The mean of 5 is the mean of the benchmarks' means (not pooled over documents), and a stratum resampled on
    its own keeps its size: a constant stratum adds no width."""
    small, large = np.full(10, 3.0), np.zeros(1000)
    mean, low, high = paired_bootstrap([small, large], resamples=300)
    assert (mean, low, high) == (1.5, 1.5, 1.5)
    noisy = np.random.default_rng(0).choice([-1.0, 1.0], size=400)
    _, low_one, high_one = paired_bootstrap([noisy], resamples=2000, seed=5)
    _, low_two, high_two = paired_bootstrap([noisy, np.zeros(400)], resamples=2000, seed=5)
    assert (high_two - low_two) == pytest.approx((high_one - low_one) / 2, rel=0.1)  # half the weight


@pytest.mark.parametrize("low,high,word", [(0.1, 2.0, "better"), (-2.0, -0.1, "worse"), (-1.0, 1.0, "not separable"),
                                           (0.0, 1.0, "not separable")])
def test_verdicts(low, high, word):
    assert verdict(low, high) == word


def test_loss_gaps_subtract_the_baseline_at_the_same_step_only():
    def run(losses):
        return [{"result": {"log_history": [*({"step": s, "loss": v} for s, v in losses.items()),
                                            {"step": 30, "eval_loss": 9.0}]}}]

    finals = {"adamw": run({20: 1.5, 10: 2.0}), "adasam": run({10: 1.75, 20: 1.0, 30: 0.5})}
    losses = training_losses(finals)
    assert losses["adamw"] == [(10, 2.0), (20, 1.5)]  # sorted by step; eval entries are not training loss
    assert loss_gaps(losses) == {"adasam": [(10, -0.25), (20, -0.5)]}  # step 30: no AdamW loss to compare with


def final_run(seed: int, acc: list[int], loss: float = 2.0, ids=("d0", "d1", "d2", "d3")) -> dict:
    """A final run's JSON as lm_report reads it: BoolQ scores on four documents."""
    docs = {"id": list(ids), "acc": acc}
    return {"config": {"seed": seed}, "result": {"eval_loss": loss, "benchmarks": {"after": {"boolq": {
        "documents": docs}}}}}


def experiment(finals: dict[str, list[dict]]) -> Experiment:
    exp = Experiment.__new__(Experiment)
    exp.tasks, exp.names, exp.sweep, exp.finals, exp.zero_shot = ["boolq"], list(finals), {}, finals, None
    return exp


def test_a_difference_of_zero_on_every_document_is_called_identical_and_a_cancelling_one_is_not():
    """AMSGrad gave AdamW's answer on every document in the LLM experiment; a +1/-1 pair that averages to 0 is a
    different fact (two models that disagree) and must not read the same."""
    lines = difference_lines(experiment({"adamw": [final_run(1, [1, 0, 1, 0])], "amsgrad": [final_run(1, [1, 0, 1, 0])],
                                         "adasam": [final_run(1, [0, 1, 1, 0])]}))
    assert lines[2].startswith("| amsgrad − adamw (seed 1) |")
    assert lines[2].endswith("| **identical on every document** |")
    assert lines[3].startswith("| adasam − adamw (seed 1) |") and lines[3].endswith("| **not separable** |")
    assert lines[-1].startswith("| adasam − zero-shot | not run |")  # no zero-shot scores in this report


def test_a_difference_pairs_the_seeds_both_optimizers_ran():
    """AdamW with a second seed (the LLM experiment's) must not make AMSGrad, run once, differ from it: AMSGrad's
    seed 1 is compared with AdamW's seed 1; AdaSAM, with both seeds, with the mean of AdamW's two."""
    exp = experiment({"adamw": [final_run(1, [1, 0, 1, 0]), final_run(2, [1, 1, 1, 1])],
                      "amsgrad": [final_run(1, [1, 0, 1, 0])], "adasam": [final_run(1, [0, 0, 1, 0]),
                                                                          final_run(2, [1, 1, 1, 1])]})
    assert exp.common_seeds("amsgrad", "adamw") == [1]
    assert exp.difference("amsgrad", "adamw")["identical"]
    diff = exp.difference("adasam", "adamw")
    assert diff["seeds"] == [1, 2]
    assert diff["mean"][0] == pytest.approx(100 * (2.5 / 4 - 3 / 4))  # on average AdaSAM 2.5 of 4 right, AdamW 3
    assert diff["by_seed"] == {1: pytest.approx(-25.0), 2: pytest.approx(0.0)}  # 1 of 4 against 2, then 4 against 4
    assert "by_seed" not in exp.difference("amsgrad", "adamw")  # one seed: the difference is its own
    assert exp.common_seeds("adasam", "zero-shot") == [1, 2]
    exp.finals["sam"] = [final_run(3, [1, 1, 1, 1])]
    assert exp.difference("sam", "adamw") is None  # no seed in common: nothing paired to compare


def test_the_seed_table_compares_the_last_seed_with_the_first_on_the_same_documents():
    exp = experiment({"adamw": [final_run(1, [1, 0, 0, 0], 2.25), final_run(2, [1, 1, 1, 0], 2.5)],
                      "sam": [final_run(1, [0, 0, 0, 0], 2.7)]})
    lines = seed_lines(exp)
    assert len(lines) == 3  # header, rule, adamw: one seed of sam has no spread to show
    assert lines[2].startswith("| adamw | 1: 2.250, 2: 2.500 | 1: 25.0, 2: 75.0 | +50.0 [")
    exp.finals["adamw"][1] = final_run(2, [1, 1, 1, 0], 2.5, ids=("d0", "d1", "d2", "x"))
    with pytest.raises(ValueError, match="different documents"):
        seed_lines(exp)
    exp.finals = {"sam": exp.finals["sam"]}
    assert seed_lines(exp) == []  # no table without a second seed
