"""optimlab.models: the lectures' CNN built fast (channels_last all the way,
a cheaper dropout mask, ReLU after pooling) computes what the textbook
PyTorch model computes, and keeps its layout through copies and conversions."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optimlab import optim
from optimlab.models import FastDropout, FlattenHWC, lecture_cnn, to_channels_last
from optimlab.train import fit
from tests.train_synth import isolated  # noqa: F401 (isolated: autouse fixture)

CL = torch.channels_last


def twin(fast):
    """The textbook model holding the same function: conv copied, dense columns permuted C,H,W <- H,W,C."""
    slow = lecture_cnn(fast=False, dropout=fast.dropout.p)
    with torch.no_grad():
        slow.conv.weight.copy_(fast.conv.weight)
        slow.conv.bias.copy_(fast.conv.bias)
        slow.dense.weight.copy_(fast.dense.weight.view(10, 13, 13, 32).permute(0, 3, 1, 2).reshape(10, -1))
        slow.dense.bias.copy_(fast.dense.bias)
    return slow


def test_architecture_matches_the_lectures():
    torch.manual_seed(0)
    fast, slow = lecture_cnn(), lecture_cnn(fast=False)
    assert fast(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in slow.parameters()) == 54410
    assert fast.conv.kernel_size == (3, 3) and fast.conv.out_channels == 32 and fast.dropout.p == 0.25
    assert list(fast.state_dict()) == list(slow.state_dict())
    assert lecture_cnn(3, 5, image_size=32)(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    for bad in ({"filters": 0}, {"image_size": 3}, {"dropout": 1.5}, {"num_classes": True}):
        with pytest.raises(ValueError):
            lecture_cnn(**bad)


def test_conv_output_is_channels_last_and_flatten_is_a_view():
    torch.manual_seed(0)
    model = lecture_cnn()
    x = torch.rand(4, 1, 28, 28)
    assert model.conv.weight.stride() == (9, 1, 3, 1)
    h = F.max_pool2d(model.conv(x), 2)
    assert h.is_contiguous(memory_format=CL) and h.stride(1) == 1
    flat = FlattenHWC()(h)
    assert flat.data_ptr() == h.data_ptr()  # no copy back to NCHW
    assert torch.equal(flat, h.permute(0, 2, 3, 1).reshape(4, -1))


def test_layout_survives_copy_conversion_loading_and_training():
    torch.manual_seed(0)
    model = lecture_cnn()
    assert copy.deepcopy(model).conv.weight.stride() == (9, 1, 3, 1)
    other = lecture_cnn()
    other.load_state_dict(model.state_dict())
    assert other.conv.weight.stride() == (9, 1, 3, 1)
    double = copy.deepcopy(model).double()
    assert double.conv.weight.dtype == torch.float64 and double.conv.weight.stride() == (9, 1, 3, 1)
    param = model.conv.weight
    model.to(memory_format=torch.contiguous_format)  # a conversion that drops the layout ...
    assert model.conv.weight is param and param.stride() == (9, 1, 3, 1)  # ... is undone, same Parameter
    x = torch.rand(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    fit(model, optim.create("adam", model.parameters(), fused=True), (x, y), epochs=1, batch_size=32, quiet=True,
        store=False)
    assert model.conv.weight.stride() == (9, 1, 3, 1)
    assert to_channels_last(torch.rand(2, 3, 4, 5)).stride() == (60, 1, 15, 3)


def test_fast_model_computes_the_textbook_function_and_gradients():
    torch.manual_seed(0)
    fast = lecture_cnn(dropout=0.0)
    slow = twin(fast)
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    out_fast, out_slow = fast(x), slow(x)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-5, atol=1e-5)
    F.cross_entropy(out_fast, y).backward()
    F.cross_entropy(out_slow, y).backward()
    torch.testing.assert_close(fast.conv.weight.grad, slow.conv.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.conv.bias.grad, slow.conv.bias.grad, rtol=1e-4, atol=1e-5)
    g = fast.dense.weight.grad.view(10, 13, 13, 32).permute(0, 3, 1, 2).reshape(10, -1)
    torch.testing.assert_close(g, slow.dense.weight.grad, rtol=1e-4, atol=1e-6)


def test_relu_after_pooling_is_bitwise_the_same():
    x = torch.randn(8, 32, 26, 26)
    assert torch.equal(F.relu(F.max_pool2d(x, 2)), F.max_pool2d(F.relu(x), 2))


@pytest.mark.parametrize("p", [0.25, 0.375 + 1 / 65536, 0.1], ids=["8-bit", "16-bit", "32-bit"])
def test_fast_dropout_has_the_law_of_dropout(p):
    torch.manual_seed(0)
    drop = FastDropout(p)
    x = torch.ones(1_000_000)
    y = drop(x)
    kept = y != 0
    n = x.numel()
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(int(kept.sum()) - n * (1 - p)) < 4 * sigma  # Bernoulli(1 - p) keep count
    assert torch.all(y[kept] == 1 / (1 - p))  # kept values scaled by 1 / (1 - p)
    assert abs(y.mean().item() - 1.0) < 4 * sigma / n / (1 - p)  # the mean is preserved
    # independence: neighbours are kept together with probability (1 - p)^2
    both = (kept[:-1] & kept[1:]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 0.003
    z = torch.randn(3, 4, 5, 6).contiguous(memory_format=CL).requires_grad_()
    out = drop(z)
    assert out.is_contiguous(memory_format=CL)
    out.sum().backward()
    assert torch.equal(z.grad, (out.detach() != 0).float() / (1 - p))  # gradient = mask / (1 - p)
    drop.eval()
    assert drop(z) is z
    assert torch.equal(FastDropout(1.0)(z), torch.zeros_like(z)) and FastDropout(0.0)(z) is z
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(-0.1)


def test_fast_dropout_lanes_give_the_keep_probability_exactly_where_representable():
    from optimlab.models import _lanes

    for p, bits in ((0.25, 8), (0.5, 8), (255 / 256, 8), (0.375 + 1 / 65536, 16), (0.1, 32), (1 / 3, 32)):
        dtype, k = _lanes(p)
        assert torch.iinfo(dtype).bits == bits
        kept = 2**bits // 2 - k  # lanes b in [k, 2^(bits-1)) of 2^bits equally likely values
        if bits < 32:
            assert kept / 2**bits == 1 - p
        else:
            assert abs(kept / 2**bits - (1 - p)) <= 2**-32


def test_same_accuracy_as_the_textbook_model_on_a_small_image_task():
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(10, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (768,), generator=g)
    x = (templates[y] + 0.8 * torch.rand(768, 1, 28, 28, generator=g)).clamp(0, 1.5) / 1.5
    train, val = (x[:512], y[:512]), (x[512:], y[512:])
    accs = []
    for fast in (True, False):
        torch.manual_seed(0)
        model = lecture_cnn(fast=fast)
        h = fit(model, optim.create("adam", model.parameters(), lr=1e-3), train, val=val, epochs=2,
                batch_size=64, seed=0, quiet=True, store=False)
        accs.append(h.last["val_acc"])
    assert min(accs) > 0.9 and abs(accs[0] - accs[1]) < 0.05, accs


def test_the_model_is_an_ordinary_module():
    model = lecture_cnn()
    assert isinstance(model, nn.Module) and "ChannelsLastConv2d" in repr(model) and "FastDropout(p=0.25)" in repr(model)


def test_tune_allocator_stops_page_faults_on_reused_big_tensors(monkeypatch):
    import resource
    import sys

    from optimlab import cpu

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc tuning is Linux-only")
    monkeypatch.setattr(cpu, "_done", {})
    monkeypatch.setenv(cpu.ENV_VAR, "0")
    assert cpu.tune_allocator() is False  # switched off: malloc left alone
    monkeypatch.setattr(cpu, "_done", {})
    monkeypatch.delenv(cpu.ENV_VAR)
    if not cpu.tune_allocator():
        pytest.skip("not glibc")
    assert cpu.tune_allocator() is True  # once per process, idempotent

    def churn():
        for _ in range(20):
            a = torch.empty(1_400_000)  # 5.6 MB, the size of the CNN's conv output
            a.fill_(1.0)
            del a

    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 20 * 1_400_000 * 4 / 4096 / 10  # < 10% of the pages: the memory is reused
