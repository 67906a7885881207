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


def test_a_difference_of_zero_on_every_document_is_called_identical_and_a_cancelling_one_is_not():
    """AMSGrad gave AdamW's answer on every document in the LLM experiment; a +1/-1 pair that averages to 0 is a
    different fact (two models that disagree) and must not read the same."""
    ids = ["d0", "d1", "d2", "d3"]
    scores = {"adamw": [1.0, 0.0, 1.0, 0.0], "amsgrad": [1.0, 0.0, 1.0, 0.0], "adasam": [0.0, 1.0, 1.0, 0.0]}
    exp = Experiment.__new__(Experiment)
    exp.tasks, exp.names, exp.sweep = ["boolq"], list(scores), {}
    exp.scores = lambda name, task: (ids, np.array(scores[name])) if name in scores else None
    lines = difference_lines(exp)
    assert lines[2].startswith("| amsgrad − adamw |") and lines[2].endswith("| **identical on every document** |")
    assert lines[3].startswith("| adasam − adamw |") and lines[3].endswith("| **not separable** |")
    assert lines[-1].startswith("| adasam − zero-shot | not run |")  # no zero-shot scores in this report


def test_the_seed_table_compares_the_last_seed_with_the_first_on_the_same_documents():
    def run(seed, loss, acc):
        docs = {"id": ["d0", "d1", "d2", "d3"], "acc": acc}
        return {"config": {"seed": seed}, "result": {"eval_loss": loss, "benchmarks": {"after": {"boolq": {
            "documents": docs}}}}}

    exp = Experiment.__new__(Experiment)
    exp.tasks = ["boolq"]
    exp.finals = {"adamw": [run(1, 2.25, [1, 0, 0, 0]), run(2, 2.5, [1, 1, 1, 0])], "sam": [run(1, 2.7, [0, 0, 0, 0])]}
    lines = seed_lines(exp)
    assert len(lines) == 3  # header, rule, adamw: one seed of sam has no spread to show
    assert lines[2].startswith("| adamw | 1: 2.250, 2: 2.500 | 1: 25.0, 2: 75.0 | +50.0 [")
    exp.finals["adamw"][1]["result"]["benchmarks"]["after"]["boolq"]["documents"]["id"] = ["d0", "d1", "d2", "x"]
    with pytest.raises(ValueError, match="different documents"):
        seed_lines(exp)
    exp.finals = {"sam": exp.finals["sam"]}
    assert seed_lines(exp) == []  # no table without a second seed
