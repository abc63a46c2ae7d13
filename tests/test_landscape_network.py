"""Real-network surfaces on a small synthetic problem: filter normalisation, the 1-D line,
2-D slices (random and PCA) with the projected path, the comparison study, its pictures and
the CLI wiring (MNIST replaced by synthetic images)."""

import io
import types

import numpy as np
import pytest
import torch
from torch import nn

from optimlab.cli import main
from optimlab.landscape import network as N
from optimlab.landscape import network_study as NS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def blobs(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    y = torch.randint(0, 3, (n,), generator=g)
    return centers[y] + torch.randn(n, 4, generator=g), y


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_filter_normalised_direction_matches_each_filter_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    d = N.filter_normalized_direction(model, torch.Generator().manual_seed(1))
    assert d.shape == N.flatten(model).shape
    offset = 0
    for p in model.parameters():
        part = d[offset:offset + p.numel()].reshape(p.shape)
        offset += p.numel()
        if p.dim() <= 1:
            assert torch.all(part == 0), "biases and norm-layer parameters are left out"
        else:
            torch.testing.assert_close(part.reshape(len(p), -1).norm(dim=1),
                                       p.detach().reshape(len(p), -1).norm(dim=1), rtol=1e-5, atol=0)
    again = N.filter_normalized_direction(model, torch.Generator().manual_seed(1))
    assert torch.equal(d, again)
    kept = N.filter_normalized_direction(model, torch.Generator().manual_seed(1), biases="weights")
    assert torch.equal(kept[-5:], model[3].bias.detach())
    with pytest.raises(ValueError, match="biases="):
        N.filter_normalized_direction(model, biases="drop")


def test_evaluator_is_batched_exactly_and_restores_the_weights():
    model, data = small_net(), blobs()
    before = N.flatten(model)
    whole = N.Evaluator(model, data, batch_size=1000)()
    pieces = N.Evaluator(model, data, batch_size=7)()
    assert whole[0] == pytest.approx(pieces[0], rel=1e-6) and whole[1] == pieces[1]
    expected = nn.functional.cross_entropy(model(data[0]), data[1]).item()
    assert whole[0] == pytest.approx(expected, rel=1e-6)
    N.Evaluator(model, data)(torch.zeros_like(before))
    assert torch.equal(N.flatten(model), before)
    with pytest.raises(ValueError, match="same non-zero length"):
        N.Evaluator(model, (data[0], data[1][:3]))


def test_training_path_and_the_line_from_initial_to_final_weights():
    model, data = small_net(), blobs()
    start = N.flatten(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path, losses = N.train_path(model, opt, data, epochs=2, batch_size=32, record_every=4, progress=False)
    steps = 2 * 8
    assert len(losses) == steps and path.shape == (1 + steps // 4, start.numel())
    assert torch.equal(path[0], start) and torch.equal(path[-1], N.flatten(model))
    line = N.interpolate(model, start, path[-1], data, alphas=[0.0, 0.5, 1.0], progress=False)
    ev = N.Evaluator(model, data)
    assert line.losses[0] == pytest.approx(ev(start)[0]) and line.losses[2] == pytest.approx(ev(path[-1])[0])
    assert line.losses[2] < line.losses[0], "training lowered the loss"


def test_slice_centre_is_the_model_and_directions_are_reproducible():
    model, data = small_net(), blobs()
    s = N.slice2d(model, data, resolution=5, span=0.5, seed=3, progress=False)
    assert s.losses.shape == (5, 5) and s.kind == "random (filter-normalised)"
    assert s.losses[2, 2] == pytest.approx(s.center_loss) == pytest.approx(N.Evaluator(model, data)()[0])
    ev = N.Evaluator(model, data)
    centre = N.flatten(model)
    assert s.losses[0, 4] == pytest.approx(ev(centre + 0.5 * s.d1 - 0.5 * s.d2)[0], rel=1e-6)
    again = N.slice2d(model, data, resolution=5, span=0.5, seed=3, progress=False)
    np.testing.assert_array_equal(s.losses, again.losses)
    assert s.sharpness(radius=0.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="needs the weight path"):
        N.slice2d(model, data, directions="pca", progress=False)
    with pytest.raises(ValueError, match="resolution"):
        N.slice2d(model, data, resolution=1, progress=False)


def test_pca_plane_holds_a_planar_path_exactly():
    g = torch.Generator().manual_seed(0)
    center = torch.randn(50, generator=g, dtype=torch.float64)
    u, v = torch.linalg.qr(torch.randn(50, 2, generator=g, dtype=torch.float64))[0].T
    coords = np.array([[3.0, 1.0], [2.0, 0.2], [1.0, -0.4], [0.4, 0.1], [0.0, 0.0]])
    path = torch.stack([center + a * u + b * v for a, b in coords])
    d1, d2, explained = N.pca_directions(path)
    assert float(d1 @ d2) == pytest.approx(0, abs=1e-12) and float(d1.norm()) == pytest.approx(1)
    assert explained.sum() == pytest.approx(1.0) and explained[0] > explained[1]
    xy = N.project(path, center, d1, d2)
    assert xy[-1] == pytest.approx([0, 0], abs=1e-12)
    # the plane is the path's plane: distances within the path are kept
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    np.testing.assert_allclose(np.linalg.norm(xy[:, None] - xy[None], axis=2), dist, atol=1e-9)
    np.testing.assert_allclose(N.project(path, center, u, v), coords, atol=1e-12)


def test_pca_slice_covers_the_projected_training_path():
    model, data = small_net(), blobs()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    path, _ = N.train_path(model, opt, data, epochs=2, batch_size=16, record_every=3, progress=False)
    s = N.slice2d(model, data, directions="pca", path=path, resolution=5, progress=False)
    assert s.kind == "pca" and s.path_xy.shape == (len(path), 2)
    assert np.all(np.abs(s.path_xy[:, 0]) <= s.alphas.max()) and np.all(np.abs(s.path_xy[:, 1]) <= s.betas.max())
    assert s.path_xy[-1] == pytest.approx([0, 0], abs=1e-5)
    assert s.explained[0] > 0.3


def test_progress_bar_reports_counts():
    stream = io.StringIO()
    bar = N.Progress(8, "slice", stream=stream)
    for _ in range(8):
        bar.update()
    text = stream.getvalue()
    assert "slice [" in text and "8/8" in text and text.count("\n") <= 5
    quiet = io.StringIO()
    N.Progress(3, "x", enabled=False, stream=quiet).update(3)
    assert quiet.getvalue() == ""


def test_study_compares_two_optimizers_final_points(tmp_path):
    data = blobs()
    results = NS.study(small_net, {"sgd": {"lr": 0.1}, "adam": {"lr": 0.01}}, data, data, blobs(seed=1),
                       epochs=1, batch_size=32, record_every=2, resolution=5, pca_resolution=4,
                       span=0.5, progress=False)
    assert [r.optimizer for r in results] == ["sgd", "adam"]
    for r in results:
        assert r.random_slice.losses.shape == (5, 5) and r.pca_slice.losses.shape == (4, 4)
        assert r.line.losses.shape == (41,) and np.isfinite(r.sharpness())
        assert torch.equal(r.path[0], results[0].path[0]), "same initial weights"
    text = NS.table(results)
    assert "| optimizer | lr" in text and "val acc" in text and "sharpness" in text
    for path in (NS.plot_line(results, tmp_path / "line.png", dpi=40),
                 NS.plot_slices(results, tmp_path / "slices.png", dpi=40)):
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_cli_network_mode_on_synthetic_images(tmp_path, capsys, monkeypatch):
    from optimlab import data as data_module
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    fake = types.SimpleNamespace(train=(x, y), val=(x[:32], y[:32]), source="synthetic")
    monkeypatch.setattr(data_module, "load", lambda name: fake)
    code = main(["landscape", "--network", "mlp", "--optimizers", "sgd,adam", "--train-size", "64",
                 "--eval-size", "32", "--resolution", "3", "--pca-resolution", "3", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| sgd " in out and "| adam " in out and "synthetic" in err
    assert (tmp_path / "mlp_line.png").is_file() and (tmp_path / "mlp_slices.png").is_file()
