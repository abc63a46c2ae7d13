"""Initialisation: empirical statistics match the lecture formulas, and the
lecture's claim about deep ReLU networks holds."""

import math

import pytest
import torch
from torch import nn

from optimlab import init

# The lecture formulas, written out independently of the library: scheme -> std(n_in, n_out).
FORMULA_STD = {
    "xavier_normal": lambda n_in, n_out: math.sqrt(2 / (n_in + n_out)),
    "xavier_uniform": lambda n_in, n_out: math.sqrt(2 / (n_in + n_out)),
    "he_normal": lambda n_in, n_out: math.sqrt(2 / n_in),
    "he_uniform": lambda n_in, n_out: math.sqrt(2 / n_in),
    "lecun_normal": lambda n_in, n_out: math.sqrt(1 / n_in),
    "lecun_uniform": lambda n_in, n_out: math.sqrt(1 / n_in),
}

# (layer, n_in, n_out) with fans counted by hand: channels × kernel for convolutions.
LARGE_LAYERS = {
    "linear": (lambda: nn.Linear(1024, 512), 1024, 512),
    "conv2d": (lambda: nn.Conv2d(64, 128, kernel_size=5), 64 * 25, 128 * 25),
    "conv1d": (lambda: nn.Conv1d(96, 200, kernel_size=7), 96 * 7, 200 * 7),
}


@pytest.mark.parametrize("layer_name", LARGE_LAYERS)
@pytest.mark.parametrize("scheme", FORMULA_STD)
def test_empirical_std_matches_formula_within_2_percent(scheme, layer_name):
    make, n_in, n_out = LARGE_LAYERS[layer_name]
    torch.manual_seed(0)
    layer = make()
    nn.init.uniform_(layer.bias, 1.0, 2.0)  # so zeroing is visible
    assert init.apply(layer, scheme) == [""]
    w = layer.weight.detach().double()
    expected = FORMULA_STD[scheme](n_in, n_out)
    assert w.std().item() == pytest.approx(expected, rel=0.02)
    assert abs(w.mean().item()) < 0.02 * expected
    assert torch.count_nonzero(layer.bias) == 0
    assert init.weight_std(scheme, *init.fans(layer.weight)) == pytest.approx(expected, rel=1e-12)
    if scheme.endswith("uniform"):
        bound = math.sqrt(3) * expected  # a uniform U(±b) has std b/√3
        assert w.abs().max().item() <= bound
        assert w.abs().max().item() > 0.99 * bound


@pytest.mark.parametrize("scheme, torch_call", [
    ("he_normal", lambda w, g: nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g)),
    ("kaiming_uniform", lambda w, g: nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g)),
    ("glorot_normal", lambda w, g: nn.init.xavier_normal_(w, generator=g)),
    ("lecun_normal", lambda w, g: nn.init.normal_(w, 0.0, 1 / math.sqrt(w.shape[1]), generator=g)),
])
def test_samples_are_torch_nn_init_draws(scheme, torch_call):
    layer, reference = nn.Linear(300, 200), torch.empty(200, 300)
    init.apply(layer, scheme, generator=torch.Generator().manual_seed(7))
    torch_call(reference, torch.Generator().manual_seed(7))
    torch.testing.assert_close(layer.weight.detach(), reference, rtol=1e-6, atol=0)


def activation_scales(scheme, *, std=None, depth=30, width=256, batch=128):
    """RMS of the post-ReLU activations of each layer of a deep MLP, relative to the input's."""
    torch.manual_seed(0)
    layers = [nn.Linear(width, width, dtype=torch.float64) for _ in range(depth)]
    init.apply(nn.Sequential(*layers), scheme, std=std)
    h = torch.randn(batch, width, dtype=torch.float64)
    rms0, scales = h.pow(2).mean().sqrt(), []
    with torch.no_grad():
        for layer in layers:
            h = torch.relu(layer(h))
            scales.append((h.pow(2).mean().sqrt() / rms0).item())
    return scales


def test_he_keeps_a_30_layer_relu_mlp_at_scale_while_naive_init_collapses_or_explodes():
    he = activation_scales("he_normal")
    assert all(0.5 <= s <= 2.0 for s in he), he

    big = activation_scales("normal", std=1.0)  # grows ~ sqrt(width/2) = 11x per layer
    small = activation_scales("normal", std=0.01)  # shrinks ~ 0.11x per layer
    assert big[-1] > 1e20 and small[-1] < 1e-20
    assert big[5] > 2.0 and small[5] < 0.5  # already outside the band after a few layers
    # Xavier suits tanh, not ReLU: halving the variance per layer fades the signal as 2^(-depth/2).
    assert activation_scales("xavier_normal")[-1] < 1e-3


def test_options_and_reproducibility():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    nn.init.ones_(model[3].bias)
    assert init.apply(model, "xavier_uniform", zero_bias=False) == ["0", "3"]
    assert torch.all(model[3].bias == 1)

    first = nn.Linear(50, 40)
    second = nn.Linear(50, 40)
    init.apply(first, "he_uniform", generator=torch.Generator().manual_seed(3))
    init.apply(second, "he_uniform", generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.weight, second.weight)


@pytest.mark.parametrize("call, argument", [
    (lambda: init.apply(nn.Linear(3, 3), "orthogonal"), "scheme='orthogonal'"),
    (lambda: init.apply(nn.Linear(3, 3), "normal"), "std=None"),
    (lambda: init.apply(nn.Linear(3, 3), "normal", std=-0.1), "std=-0.1"),
    (lambda: init.apply(nn.Linear(3, 3), "he_normal", std=0.1), "std=0.1"),
    (lambda: init.apply(nn.ReLU(), "he_normal"), "model=ReLU"),
    (lambda: init.weight_std("he", 10, 10), "scheme='he'"),
])
def test_bad_input_raises_value_error_naming_argument_and_value(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
