"""analysis.stats: intervals and paired tests equal scipy's on the same numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.stats import (
    method_text,
    paired_comparison,
    paired_test,
    sensitivity_spread,
    spread_bootstrap,
    standard_comparisons,
    summarize,
)
from uslearn.errors import UserError


def runs_frame(values: dict[tuple[str, float], list[float]]) -> pd.DataFrame:
    """Return a runs frame: one row per (strategy, lam) and seed (the list position)."""
    rows = [
        dict(strategy=s, lam=lam, seed=seed, run_id=f"{s}{lam}{seed}", **{"test/f1_weighted": v})
        for (s, lam), vs in values.items()
        for seed, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_t_interval_equals_scipy():
    values = [0.61, 0.64, 0.58, 0.66, 0.63]
    frame = runs_frame({("lsd", 2.0): values})
    row = summarize(frame, ["strategy"], level=0.9).iloc[0]
    low, high = sps.t.interval(0.9, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert row["n"] == 5
    assert (row["mean"], row["low"], row["high"]) == pytest.approx((np.mean(values), low, high))


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(1).normal(0.6, 0.05, 12)
    frame = runs_frame({("lsd", 2.0): list(values)})
    row = summarize(frame, ["strategy"], method="bootstrap", n_boot=20000).iloc[0]
    ref = sps.bootstrap(
        (values,), np.mean, n_resamples=20000, method="percentile", random_state=0
    ).confidence_interval
    width = ref.high - ref.low
    assert row["low"] == pytest.approx(ref.low, abs=0.05 * width)
    assert row["high"] == pytest.approx(ref.high, abs=0.05 * width)


def test_single_run_has_a_mean_but_no_interval():
    row = summarize(runs_frame({("lsd", 2.0): [0.7]}), ["strategy"]).iloc[0]
    assert row["mean"] == 0.7 and np.isnan(row["low"]) and np.isnan(row["high"])


def test_method_text_names_the_interval_and_rejects_unknown_methods():
    assert "Student t" in method_text("t") and "95 %" in method_text("t")
    assert "bootstrap" in method_text("bootstrap", 0.9) and "90 %" in method_text("bootstrap", 0.9)
    with pytest.raises(UserError, match="unknown interval method"):
        method_text("bayes")


def test_paired_test_equals_scipy_t_test_and_wilcoxon():
    a = np.array([0.66, 0.64, 0.65, 0.67, 0.63, 0.66, 0.69])
    b = np.array([0.60, 0.62, 0.55, 0.64, 0.61, 0.57, 0.70])
    result = paired_test(a, b)
    t = sps.ttest_rel(a, b)
    w = sps.wilcoxon(a, b)
    diff = a - b
    assert result["t"] == pytest.approx(t.statistic) and result["p_t"] == pytest.approx(t.pvalue)
    assert result["w"] == pytest.approx(w.statistic) and result["p_w"] == pytest.approx(w.pvalue)
    assert result["d_z"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    # One negative difference, the smallest (rank 1 of 7): r = (27 - 1) / 28.
    assert result["r_rb"] == pytest.approx(26 / 28)
    assert result["note"] == ""


def test_too_few_seeds_are_noted():
    four = paired_test([0.7, 0.6, 0.8, 0.75], [0.6, 0.5, 0.7, 0.7])
    assert "4 pairs" in four["note"] and "cannot show a difference" in four["note"]
    one = paired_test([0.7], [0.6])
    assert np.isnan(one["p_t"]) and "no test" in one["note"]
    same = paired_test([0.75, 0.5, 1.0], [0.5, 0.25, 0.75])
    assert np.isnan(same["t"]) and "undefined" in same["note"]


def test_paired_comparison_pairs_runs_by_seed_within_each_lambda():
    values = {
        ("lsd", 0.5): [0.60, 0.62, 0.65, 0.61, 0.66, 0.64],
        ("pica", 0.5): [0.55, 0.60, 0.58, 0.52, 0.61, 0.63],
        ("lsd", 2.0): [0.70, 0.69, 0.71, 0.72, 0.68, 0.73],
        ("pica", 2.0): [0.66, 0.60, 0.70, 0.65, 0.69, 0.64],
    }
    frame = runs_frame(values).sample(frac=1.0, random_state=3)  # order must not matter
    table = paired_comparison(frame, "strategy", "lsd", "pica", by=("lam",))
    assert table["lam"].tolist() == [0.5, 2.0]
    for _, row in table.iterrows():
        ref = sps.ttest_rel(values[("lsd", row["lam"])], values[("pica", row["lam"])])
        assert row["p_t"] == pytest.approx(ref.pvalue)
        assert row["n"] == 6


def test_two_runs_with_the_same_seed_cannot_be_paired():
    frame = runs_frame({("lsd", 2.0): [0.6, 0.7], ("pica", 2.0): [0.5, 0.6]})
    frame.loc[1, "seed"] = 0
    with pytest.raises(UserError, match="cannot pair them by seed"):
        paired_comparison(frame, "strategy", "lsd", "pica", by=("lam",))
    skipped: list[str] = []
    assert standard_comparisons(frame, skipped=skipped).empty
    assert skipped and skipped[0].startswith("LSD vs PICA")


def test_standard_comparisons_find_the_contrasts_the_runs_allow():
    frame = runs_frame({("lsd", 2.0): [0.6, 0.7, 0.65], ("pica", 2.0): [0.5, 0.6, 0.7]})
    table = standard_comparisons(frame)
    assert table["comparison"].tolist() == ["LSD vs PICA"]
    assert table["group"].tolist() == ["lam=2"]


def test_iic_is_compared_with_each_paper_method_by_seed():
    values = {("lsd", 2.0): [0.60, 0.62, 0.65], ("pica", 2.0): [0.55, 0.60, 0.58]}
    iic = [0.50, 0.61, 0.57]
    frame = runs_frame({**values, ("iic", np.nan): iic})  # IIC has no λ
    table = standard_comparisons(frame).set_index("comparison")
    assert table.loc["IIC vs LSD", "group"] == "all runs"
    assert table.loc["IIC vs LSD", "p_t"] == pytest.approx(
        sps.ttest_rel(iic, values[("lsd", 2.0)]).pvalue
    )
    pica = values[("pica", 2.0)]
    assert table.loc["IIC vs PICA", "mean_diff"] == pytest.approx(np.mean(iic) - np.mean(pica))


def test_semi_supervised_is_compared_with_supervised_at_the_same_init_and_fraction():
    rows = []
    for strategy, offset in (("fixmatch_two", 0.05), ("supervised", 0.0)):
        for init, fraction in (("random", 0.1), ("clustering", 0.1), ("random", 1.0)):
            for seed in range(3):
                value = 0.5 + offset + 0.1 * fraction + 0.01 * seed * (strategy == "supervised")
                rows.append(
                    dict(
                        strategy=strategy,
                        init_kind=init,
                        label_fraction=fraction,
                        seed=seed,
                        run_id=f"{strategy}{init}{fraction}{seed}",
                        **{"test/f1_weighted": value},
                    )
                )
    table = standard_comparisons(pd.DataFrame(rows))
    semi = table[table["comparison"] == "Two-Head vs supervised"]
    assert sorted(semi["group"]) == [
        "init_kind=clustering, label_fraction=0.1",
        "init_kind=random, label_fraction=0.1",
        "init_kind=random, label_fraction=1",
    ]
    # Per seed: 0.05 − 0.01·seed over seeds 0, 1, 2: mean 0.04, and the t-test as scipy's.
    assert semi["mean_diff"].to_numpy() == pytest.approx([0.04] * 3)
    a = [0.5 + 0.05 + 0.01 for _ in range(3)]
    b = [0.5 + 0.01 + 0.01 * s for s in range(3)]
    assert semi["p_t"].iloc[0] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    dc = table[table["comparison"] == "DC vs random init"]
    assert set(dc["group"]) == {
        "strategy=fixmatch_two, label_fraction=0.1",
        "strategy=supervised, label_fraction=0.1",
    }


def spread_values(slopes=(0.05, 0.0), noise=0.0, seeds=4) -> np.ndarray:
    """Return (2 methods, 5 λ, seeds) scores: a method's mean grows by its slope per λ step."""
    rng = np.random.default_rng(0)
    lam_effect = np.arange(5)[None, :, None] * np.asarray(slopes)[:, None, None]
    return 0.6 + lam_effect + noise * rng.standard_normal((2, 5, seeds))


def test_spread_is_the_standard_deviation_of_the_cell_means_across_the_parameter():
    values = spread_values(noise=0.01)
    result = spread_bootstrap(values, n_boot=2000)
    for m in range(2):
        cell_means = [np.mean(values[m, v]) for v in range(5)]
        assert result["spread"][m] == pytest.approx(np.std(cell_means, ddof=1))
        within = np.mean([np.var(values[m, v], ddof=1) for v in range(5)])
        assert result["noise_floor"][m] == pytest.approx(np.sqrt(within / 4))
        assert result["low"][m] <= result["spread"][m] <= result["high"][m]
    assert result["diff"] == pytest.approx(result["spread"][0] - result["spread"][1])


def test_without_seed_noise_the_bootstrap_intervals_have_no_width():
    # Every seed gives the same score in a cell: resampling seeds changes nothing.
    result = spread_bootstrap(spread_values(noise=0.0), n_boot=500)
    assert result["low"] == pytest.approx(result["high"])
    assert result["spread"][0] == pytest.approx(0.05 * np.std(np.arange(5), ddof=1))
    assert result["spread"][1] == pytest.approx(0.0)
    assert result["diff_low"] == pytest.approx(result["diff_high"])


def test_a_method_that_follows_the_parameter_has_a_larger_spread_with_a_ci_above_zero():
    result = spread_bootstrap(spread_values(slopes=(0.04, 0.0), noise=0.01, seeds=6))
    assert result["diff_low"] > 0
    flat = spread_bootstrap(spread_values(slopes=(0.0, 0.0), noise=0.01, seeds=6))
    assert flat["diff_low"] < 0 < flat["diff_high"]


def test_sensitivity_spread_reads_a_runs_frame_and_drops_incomplete_seeds():
    values = {}
    for m, strategy in enumerate(("pica", "lsd")):
        for v, lam in enumerate((10.0, 0.5, 2.0, 1.0, 5.0)):  # unsorted on purpose
            values[(strategy, lam)] = list(spread_values(noise=0.01)[m, v])
    frame = runs_frame(values)
    frame = frame[~((frame["strategy"] == "lsd") & (frame["lam"] == 5.0) & (frame["seed"] == 3))]
    table, notes = sensitivity_spread(frame, "lam", ("pica", "lsd"), n_boot=1000)
    assert table["row"].tolist() == ["pica", "lsd", "pica − lsd"]
    assert (table["n_seeds"] == 3).all() and (table["n_values"] == 5).all()
    assert notes == ["seeds [3] left out of the spread: not run in every cell"]
    complete = frame[frame["seed"] < 3]
    pica = complete[complete["strategy"] == "pica"].groupby("lam")["test/f1_weighted"].mean()
    assert table["spread"].iloc[0] == pytest.approx(np.std(pica.to_numpy(), ddof=1))
    with pytest.raises(UserError, match="needs runs of lsd"):
        sensitivity_spread(frame[frame["strategy"] == "pica"], "lam", ("pica", "lsd"))
