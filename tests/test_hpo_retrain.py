"""The retraining verdict: paired differences, t-interval, pooled std, words (known numbers)."""

from __future__ import annotations

import pytest

from cliptune.hpo.retrain import compare


def test_a_clear_gain_is_better():
    result = compare([10.0, 12.0, 14.0], [5.0, 6.0, 7.0])
    assert result["differences"] == [5.0, 6.0, 7.0]
    assert result["mean_difference"] == pytest.approx(6.0)
    # t(0.975, 2 df) = 4.3027; sd of the differences 1; half-width 4.3027 / sqrt(3)
    low, high = result["interval_95"]
    assert (low, high) == pytest.approx((6 - 2.48416, 6 + 2.48416), abs=1e-4)
    assert result["pooled_std"] == pytest.approx(((4 + 1) / 2) ** 0.5)
    assert result["verdict_word"] == "better"
    assert result["verdict"].startswith("The best config is better than the base config")


def test_an_interval_excluding_0_but_a_small_gain_is_within_the_noise():
    # differences 1, 1.1, 0.9: interval above 0, but the seeds spread by ~5 (pooled std)
    result = compare([471.0, 461.1, 480.9], [470.0, 460.0, 480.0])
    assert result["interval_95"][0] > 0
    assert 2 * result["pooled_std"] > result["mean_difference"]
    assert result["verdict_word"] == "within the noise"
    assert "within the noise of the base config" in result["verdict"]


def test_a_clear_loss_is_worse_and_lower_is_better_flips_the_sides():
    assert compare([5.0, 6.0, 7.0], [10.0, 12.0, 14.0])["verdict_word"] == "worse"
    loss = compare([1.0, 1.1, 1.2], [2.0, 2.2, 2.4], metric="loss", higher_is_better=False)
    assert loss["verdict_word"] == "better"


def test_one_seed_has_no_interval_and_no_verdict():
    result = compare([500.0], [100.0])
    assert result["interval_95"] is None and result["verdict_word"] == "within the noise"
    assert "--seeds 3" in result["verdict"]
    with pytest.raises(ValueError):
        compare([1.0, 2.0], [1.0])
