"""Tests for detgan.transforms: inverses, fitted statistics, state round trips, error paths."""

from __future__ import annotations

import pytest
import torch

from detgan.transforms import BoxCox, Chain, Identity, Log, Standardise, transform_from_state
from detgan.utils import DetganError


def _positive(n: int = 500) -> torch.Tensor:
    return torch.distributions.LogNormal(0.0, 1.0).sample((n, 3)).double()


@pytest.mark.parametrize(
    "make",
    [
        Identity,
        lambda: Log(offset=1.0),
        lambda: Log(offset=0.5, base=2.0),
        Standardise,
        lambda: Standardise(scalar=True, center=False),
        BoxCox,
        lambda: BoxCox(lam=0.0),
        lambda: Chain(Log(offset=1.0), Standardise()),
    ],
)
def test_inverse_of_forward_is_identity(make):
    x = _positive()
    t = make().fit(x)
    assert torch.allclose(t.inverse(t.forward(x)), x, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "make",
    [
        Identity,
        Log,
        Standardise,
        lambda: Standardise(scalar=True),
        BoxCox,
        lambda: Chain(Log(offset=0.0), Standardise(scalar=True)),
    ],
)
def test_state_dict_round_trip_gives_identical_outputs(make):
    x = _positive()
    t = make().fit(x)
    clone = transform_from_state(t.state_dict())
    assert type(clone) is type(t)
    assert torch.equal(clone.forward(x), t.forward(x))


def test_standardise_gives_zero_mean_unit_std_per_feature():
    x = torch.randn(1000, 4) * torch.tensor([1.0, 2.0, 5.0, 0.1]) + 3.0
    y = Standardise().fit(x).forward(x)
    assert torch.allclose(y.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.std(0, unbiased=False), torch.ones(4), atol=1e-4)


def test_uncentred_scalar_standardise_keeps_zero():
    x = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    t = Standardise(scalar=True, center=False).fit(x)
    assert t.forward(torch.zeros(2))[0] == 0
    assert t.std.numel() == 1


def test_constant_feature_gets_unit_scale():
    x = torch.ones(10, 2)
    assert torch.isfinite(Standardise().fit(x).forward(x)).all()


def test_log_matches_numpy_definition():
    x = torch.tensor([0.0, 9.0, 99.0])
    assert torch.allclose(Log(offset=1.0).forward(x), torch.tensor([0.0, 1.0, 2.0]))


def test_boxcox_recovers_log_for_lognormal_data():
    x = torch.distributions.LogNormal(2.0, 0.5).sample((20000,))
    assert abs(BoxCox().fit(x).lam) < 0.05


def test_boxcox_recovers_square_root_for_squared_gaussian():
    x = (torch.randn(20000) * 0.5 + 10.0) ** 2
    assert abs(BoxCox().fit(x).lam - 0.5) < 0.1


def test_errors_are_one_line_and_name_the_fix():
    with pytest.raises(DetganError, match="log transform needs x \\+ 1.0 > 0; raise the offset"):
        Log(offset=1.0).forward(torch.tensor([-2.0]))
    with pytest.raises(DetganError, match="standardise transform used before fit"):
        Standardise().forward(torch.zeros(3))
    with pytest.raises(DetganError, match="Box-Cox needs x \\+ shift > 0"):
        BoxCox().fit(torch.tensor([0.0, 1.0]))
    with pytest.raises(DetganError, match="unknown transform 'nope'"):
        transform_from_state({"name": "nope"})
