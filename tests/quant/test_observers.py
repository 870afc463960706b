"""Each observer on a known distribution, against hand-computed or published clipping ranges."""

from __future__ import annotations

import pytest
import torch

from dfq.quant.fake_quant import IntegerGrid
from dfq.quant.observers import (
    OBSERVERS,
    ACIQObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    aciq_alpha,
    make_observer,
    quantization_error,
)
from dfq.quant.quantizer import Quantizer, QuantSpec


def laplace(count: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(count, generator=generator, dtype=torch.float64) - 0.5
    return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).float()


def test_minmax_per_tensor_and_per_channel():
    observer = MinMaxObserver()
    observer.update(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    observer.update(torch.tensor([[4.0, 0.0]]))
    assert [t.item() for t in observer.range()] == [-2.0, 4.0]
    per_channel = MinMaxObserver(channel_axis=1)
    per_channel.update(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    low, high = per_channel.range()
    assert low.tolist() == [1.0, -2.0] and high.tolist() == [3.0, 0.5]


def test_moving_average_minmax_hand_computed():
    observer = MovingAverageMinMaxObserver(momentum=0.9)
    observer.update(torch.tensor([-1.0, 2.0]))
    observer.update(torch.tensor([-3.0, 12.0]))
    low, high = observer.range()
    assert low.item() == pytest.approx(0.9 * -1 + 0.1 * -3)
    assert high.item() == pytest.approx(0.9 * 2 + 0.1 * 12)


def test_percentile_on_a_uniform_ramp():
    observer = PercentileObserver(percentile=99.0)
    observer.update(torch.arange(1.0, 10_001.0))  # 1 .. 10000: the 99th percentile is 9900
    low, high = observer.range()
    assert (low.item(), high.item()) == (101.0, 9900.0)


def test_observer_without_data_says_to_calibrate():
    for name in OBSERVERS:
        with pytest.raises(RuntimeError, match="calibration"):
            make_observer(name).range()


def test_mse_keeps_the_full_range_of_uniform_data_at_8_bits():
    values = torch.linspace(-1.0, 1.0, 20_001)
    observer = MSEObserver(grid=IntegerGrid(8))
    observer.update(values)
    low, high = observer.range()
    assert high.item() >= 0.98 and low.item() <= -0.98


def test_mse_clips_heavy_tails_and_beats_every_other_candidate():
    values = laplace(100_000)
    grid = IntegerGrid(4)
    observer = MSEObserver(grid=grid, num_candidates=80)
    observer.update(values)
    low, high = observer.range()
    full_low, full_high = values.min(), values.max()
    assert high.item() < 0.7 * full_high.item()  # the tails of a Laplace are clipped at 4 bits
    chosen = quantization_error(values[None], low, high, grid).item()
    for ratio in (0.2, 0.4, 0.6, 0.8, 1.0):
        other = quantization_error(
            values[None], full_low.reshape(1) * ratio, full_high.reshape(1) * ratio, grid
        )
        assert chosen <= other.item() + 1e-9


def test_mse_observer_reads_the_bit_width_through_the_quantizer():
    values = laplace(50_000)
    ranges = {}
    for bits in (3, 8):
        quantizer = Quantizer(QuantSpec(bits=bits, observer="mse"))
        assert quantizer.observer.grid.bits == bits
        quantizer.observer.update(values)
        ranges[bits] = quantizer.observer.range()[1].item()
    assert ranges[3] < ranges[8]  # fewer levels: clip harder


@pytest.mark.parametrize(
    ("distribution", "published"),
    [("laplace", {2: 2.83, 3: 3.89, 4: 5.03}), ("gaussian", {2: 1.71, 3: 2.15, 4: 2.55})],
)
def test_aciq_constants_match_banner_et_al(distribution, published):
    for bits, alpha in published.items():
        assert aciq_alpha(distribution, bits) == pytest.approx(alpha, abs=0.011)
    assert aciq_alpha(distribution, 3, one_sided=True) == aciq_alpha(distribution, 4)


def test_aciq_laplace_fit_clips_at_alpha_times_b():
    values = laplace(200_000, scale=0.5)
    observer = ACIQObserver(grid=IntegerGrid(4), distribution="laplace")
    observer.update(values)
    low, high = observer.range()
    expected = 5.03 * 0.5  # alpha*(4 bits) x b, centered at the median 0
    assert high.item() == pytest.approx(expected, rel=0.03)
    assert low.item() == pytest.approx(-expected, rel=0.03)


def test_aciq_gaussian_fit_and_one_sided_relu_outputs():
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(200_000, generator=generator) * 2.0 + 1.0
    observer = ACIQObserver(grid=IntegerGrid(3), distribution="gaussian")
    observer.update(values)
    low, high = observer.range()
    assert low.item() == pytest.approx(1.0 - 2.15 * 2.0, rel=0.03)
    assert high.item() == pytest.approx(1.0 + 2.15 * 2.0, rel=0.03)
    # ReLU of a Laplace: the positive part is exponential with mean b = 1; one-sided 4-bit alpha = 6.2 b
    relu = torch.relu(laplace(200_000))
    observer = ACIQObserver(grid=IntegerGrid(4), distribution="laplace")
    observer.update(relu)
    low, high = observer.range()
    assert low.item() == 0.0
    assert high.item() == pytest.approx(min(aciq_alpha("laplace", 5), relu.max().item()), rel=0.03)


def test_unknown_observer_or_option_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="valid: .*mse"):
        make_observer("median")
    with pytest.raises(ValueError, match="observer='median' is invalid"):
        QuantSpec(observer="median")
    with pytest.raises(ValueError, match="distribution"):
        ACIQObserver(distribution="cauchy")


def test_switching_observer_drops_the_previous_observers_options_but_not_typos():
    observer = make_observer("mse", percentile=99.99, num_candidates=5)  # `quant=strict` + observer=mse
    assert isinstance(observer, MSEObserver) and len(observer.ratios) == 5
    with pytest.raises(ValueError, match="'precentile' is unknown; valid for percentile: .*'percentile'"):
        make_observer("percentile", precentile=99.0)
    with pytest.raises(ValueError, match="observer_options.precentile is unknown"):
        QuantSpec(observer="percentile", observer_options={"precentile": 99.0})
