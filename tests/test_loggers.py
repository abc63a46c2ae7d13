"""fit(..., logger=...): TensorBoard event files read back with TensorBoard's own reader and CSV
files read back with the csv module equal the history (every numeric key, every step); a resume
leaves no duplicate or stale rows; bad paths and specs are refused before training."""

import csv
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from optimlab.train import fit
from optimlab.train import loggers
from optimlab.train.loggers import CSVLogger, TensorBoardLogger, tag


def _data(n=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _fit(logger, *, epochs=3, model=None, **kwargs):
    model = model or _model()
    kwargs.setdefault("store", False)
    x, y = _data()
    return fit(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), (x[:160], y[:160]),
               val=(x[160:], y[160:]), epochs=epochs, batch_size=16, seed=0, quiet=True, logger=logger,
               sample_every=3, **kwargs)


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _expected(history):
    """Every numeric key of every row, as (step, float32 value) per tag."""
    want: dict[str, list] = {}
    for kind, rows in (("step", history.steps), ("epoch", history.epochs)):
        for row in rows:
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    want.setdefault(tag(kind, key), []).append((row["step"], float(np.float32(value))))
    return want


def test_tensorboard_events_equal_the_history(tmp_path):
    h = _fit(TensorBoardLogger(tmp_path / "tb"), sharpness_every=4)
    got = _scalars(tmp_path / "tb")
    want = _expected(h)
    assert set(got) == set(want)
    for t in want:
        assert got[t] == want[t], t
    # the names a user looks for
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "epoch/lr", "lr", "grad_norm", "train/loss_step",
            "grad_norm/0", "update_ratio/2", "sharpness", "edge_of_stability", "epoch/sharpness"} <= set(got)
    assert [s for s, _ in got["val/loss"]] == [10, 20, 30]  # global_step = the optimizer step


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _cell(value):
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _assert_csv_equals(path, rows, first):
    header, table = _read_csv(path)
    assert header[:2] == first
    assert len(table) == len(rows)
    for line, row in zip(table, rows):
        assert set(row) <= set(header)
        for key in header:
            value = row.get(key)
            assert line[key] == _cell(value), (key, line[key], value)
            if isinstance(value, float):
                assert float(line[key]) == value  # read back exactly


def test_csv_files_equal_the_history(tmp_path):
    h = _fit(f"csv:{tmp_path / 'run.csv'}", sharpness_every=20)  # sharpness first shows in epoch 2
    _assert_csv_equals(tmp_path / "run.csv", h.epochs, ["epoch", "step"])
    _assert_csv_equals(tmp_path / "run.steps.csv", h.steps, ["step", "epoch"])
    header, table = _read_csv(tmp_path / "run.csv")
    assert "sharpness" in header and table[0]["sharpness"] == "" and table[1]["sharpness"] != ""
    assert not list(tmp_path.glob("*.tmp"))


def test_a_list_of_loggers_and_steps_path_false(tmp_path):
    h = _fit([CSVLogger(tmp_path / "e.csv", steps_path=False), f"tensorboard:{tmp_path / 'tb'}"], epochs=1)
    _assert_csv_equals(tmp_path / "e.csv", h.epochs, ["epoch", "step"])
    assert not (tmp_path / "e.steps.csv").exists()
    assert _scalars(tmp_path / "tb")["val/acc"] == _expected(h)["val/acc"]


class _StopAt:
    def __init__(self, step, error=False):
        self.step, self.error = step, error

    def on_step_end(self, trainer):
        if trainer.step == self.step:
            if self.error:
                raise KeyboardInterrupt
            trainer.stop_training = True


@pytest.mark.parametrize("error", [False, True])
def test_a_resumed_run_rewrites_the_logs_without_duplicate_or_stale_rows(tmp_path, error):
    csv_path, tb = tmp_path / "run.csv", tmp_path / "tb"
    make = lambda: [CSVLogger(csv_path), TensorBoardLogger(tb)]  # noqa: E731
    ckpt = dict(checkpoint=tmp_path / "c.pt", checkpoint_every=5)
    first = make()
    if error:
        with pytest.raises(KeyboardInterrupt):
            _fit(first, callbacks=[_StopAt(27, error=True)], **ckpt)
    else:
        stopped = _fit(first, callbacks=[_StopAt(27)], **ckpt)  # mid-epoch 3: a partial row, logged
        assert stopped.epochs[-1].get("partial") and stopped.epochs[-1]["step"] == 27
        _, table = _read_csv(csv_path)
        assert table[-1]["partial"] == "True"
    assert all(lg._failed is False for lg in first) and first[1].writer is None  # closed however it ended
    time.sleep(1.1)  # event files are read in name order, which starts with the second they were made
    resumed = _fit(make(), resume=True, **ckpt)
    assert resumed.config["resumed_from_step"] == 25
    _assert_csv_equals(csv_path, resumed.epochs, ["epoch", "step"])
    _assert_csv_equals(csv_path.with_name("run.steps.csv"), resumed.steps, ["step", "epoch"])
    got, want = _scalars(tb), _expected(resumed)
    assert set(got) == set(want)
    for t in want:
        assert got[t] == want[t], t  # the stale partial epoch (step 27) is gone, nothing twice


def test_a_fresh_run_replaces_an_earlier_csv(tmp_path):
    path = tmp_path / "run.csv"
    _fit(f"csv:{path}", epochs=3)
    h = _fit(f"csv:{path}", epochs=1)
    _assert_csv_equals(path, h.epochs, ["epoch", "step"])


@pytest.mark.parametrize("spec", ["csv:{file}/run.csv", "tensorboard:{file}/tb", "tensorboard:{file}",
                                  "csv:{dir}"])
def test_an_unwritable_path_is_refused_before_training(tmp_path, spec):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    target = spec.format(file=blocker, dir=tmp_path)
    path = target.partition(":")[2]
    with pytest.raises(ValueError, match="cannot be written") as err:
        _fit(target, store=tmp_path / "runs.sqlite", checkpoint=tmp_path / "c.pt")
    assert repr(path) in str(err.value)
    assert not (tmp_path / "runs.sqlite").exists() and not (tmp_path / "c.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("spec", ["wandb:runs", "csv:", "tensorboard", 42, ["csv:ok.csv", "mlflow"]])
def test_an_unknown_logger_spec_is_refused_naming_it(tmp_path, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = spec[-1] if isinstance(spec, list) else spec
    with pytest.raises(ValueError, match=f"got logger={bad!r}"):
        _fit(spec)
    assert not (tmp_path / "ok.csv").exists()


def test_missing_tensorboard_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'optimlab\[tensorboard\]'"):
        _fit(f"tensorboard:{tmp_path / 'tb'}")
    assert not (tmp_path / "tb").exists()


def test_a_write_that_fails_during_training_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loggers, "_atomic_write", full_disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = _fit(f"csv:{tmp_path / 'run.csv'}")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "No space left on device" in messages[0]
    assert h.status == "completed" and len(h.epochs) == 3
