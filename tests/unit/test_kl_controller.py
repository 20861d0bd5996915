"""KL coefficient controllers (Ziegler et al. 2019 eq. 2)."""

import pytest

from training.kl_controller import AdaptiveKLController, FixedKLController, make_kl_controller


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.2)
    ctl.update(100.0, 64)
    assert ctl.value == 0.2


def test_adaptive_raises_coef_when_kl_above_target_and_lowers_when_below():
    high = AdaptiveKLController(0.1, target=6.0, horizon=100)
    high.update(9.0, 10)  # error 0.5 clipped to 0.2 -> * (1 + 0.2 * 10 / 100)
    assert high.value == pytest.approx(0.1 * 1.02)
    low = AdaptiveKLController(0.1, target=6.0, horizon=100)
    low.update(5.4, 10)  # error -0.1 -> * (1 - 0.1 * 0.1)
    assert low.value == pytest.approx(0.1 * 0.99)
    on_target = AdaptiveKLController(0.1, target=6.0, horizon=100)
    on_target.update(6.0, 10)
    assert on_target.value == pytest.approx(0.1)


def test_make_kl_controller():
    assert isinstance(make_kl_controller(0.1, False, 6.0, 100), FixedKLController)
    assert isinstance(make_kl_controller(0.1, True, 6.0, 100), AdaptiveKLController)
