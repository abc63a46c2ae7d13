"""The showdown on a tiny synthetic dataset: tables, report, resume after an interruption."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from optimlab import data
from optimlab.showdown import LECTURE, ShowdownConfig, build_report, lecture_recipe, run_showdown
from optimlab.showdown.runner import run_key
from tests.browser import needs_chromium, render


def tiny_dataset(n_train=256, n_val=128, seed=0) -> data.Dataset:
    """Ten classes, each a fixed random 28x28 template plus noise: learnable in a few steps."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 1, 28, 28, generator=gen)

    def draw(n):
        y = torch.randint(0, 10, (n,), generator=gen)
        x = (0.6 * templates[y] + 0.4 * torch.rand(n, 1, 28, 28, generator=gen)).clamp(0, 1)
        return x, y

    return data.Dataset("mnist", draw(n_train), draw(n_val), draw(n_val), "synthetic split", "synthetic",
                        tuple(str(i) for i in range(10)))


@pytest.fixture(autouse=True)
def synthetic_mnist(monkeypatch):
    monkeypatch.setattr(data, "load", lambda name, **kw: tiny_dataset())


def key(row, table="lecture", seed=0, convention="keras"):
    """The run key of a lecture row (a file name under runs/ and checkpoints/)."""
    return run_key(table, lecture_recipe(row, convention), seed)


def config(tmp_path, **kw):
    base = dict(optimizers=("adam", "sgd"), epochs=2, batch_size=32, seeds=1, out=str(tmp_path / "sd"),
                checkpoint_every=3, jobs=1)
    return ShowdownConfig(**{**base, **kw})


def test_runs_every_row_and_seed_and_writes_the_report(tmp_path):
    cfg = config(tmp_path, seeds=2, beyond=True)
    results = run_showdown(cfg, quiet=True)
    assert set(results) == {"lecture", "beyond"}
    assert {k: len(v) for k, v in results["lecture"].items()} == {"adam": 2, "sgd": 2}
    adam = results["lecture"]["adam"][0]["history"]
    assert len(adam["epochs"]) == 2 and adam["epochs"][-1]["val_acc"] > 0.5  # it learned
    _, printed = build_report(results, {"dataset": "mnist", "description": "test"}, cfg.out)
    assert "| Adam " in printed and f"{LECTURE['adam'][1]:.4f}" in printed and " ± " in printed
    assert "Beyond the lecture" in printed and "AdamW + warm-up + cosine" in printed
    md = (tmp_path / "sd" / "report.md").read_text()
    for chart in ("val_acc", "val_loss", "train_loss", "lr", "grad_norm", "update_ratio"):
        assert (tmp_path / "sd" / f"{chart}.png").stat().st_size > 1000 and f"({chart}.png)" in md


class InterruptAt:
    """A fit callback that raises KeyboardInterrupt at its ``step``-th step (Ctrl-C mid-run)."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def on_step_end(self, trainer):
        self.calls += 1
        if self.calls == self.step:
            raise KeyboardInterrupt


def test_interrupted_showdown_resumes_and_skips_finished_runs(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    # adam runs 16 steps (2 epochs x 8 batches); interrupt sgd in its second epoch
    with pytest.raises(KeyboardInterrupt):
        run_showdown(cfg, quiet=True, callbacks=[InterruptAt(16 + 11)])
    runs = tmp_path / "sd" / "runs"
    assert (runs / f"{key('adam')}.json").exists() and not (runs / f"{key('sgd')}.json").exists()
    assert (tmp_path / "sd" / "checkpoints" / f"{key('sgd')}.pt").exists()

    fits = []
    import optimlab.train as train_module
    real_fit = train_module.fit
    monkeypatch.setattr(train_module, "fit", lambda *a, **k: fits.append(k["name"]) or real_fit(*a, **k))
    resumed = run_showdown(cfg, quiet=True)
    assert len(fits) == 1 and fits[0].endswith(key("sgd"))  # adam was not redone

    clean = run_showdown(config(tmp_path / "clean"), quiet=True)
    for row in ("adam", "sgd"):
        a = resumed["lecture"][row][0]["history"]["epochs"]
        b = clean["lecture"][row][0]["history"]["epochs"]
        assert [e["val_loss"] for e in a] == [e["val_loss"] for e in b]  # bit-identical


def test_report_command_rebuilds_from_the_run_store(tmp_path):
    cfg = config(tmp_path, optimizers=("adagrad",), epochs=1)
    run_showdown(cfg, quiet=True)
    out = tmp_path / "rebuilt"
    from optimlab.cli import main  # in-process, so the synthetic data stays patched in

    assert main(["report", cfg.showdown_id, "--store", str(tmp_path / "sd" / "runs.sqlite"), "--out", str(out)]) == 0
    assert "| Adagrad" in (out / "report.md").read_text()
    assert main(["report", "sd-00000000", "--store", str(tmp_path / "sd" / "runs.sqlite")]) == 2


def test_bad_input_is_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got epochs=0"):
        config(tmp_path, epochs=0)
    with pytest.raises(ValueError, match="convention must be 'keras' or 'torch', got 'jax'"):
        config(tmp_path, convention="jax")
    proc = subprocess.run([sys.executable, "-m", "optimlab", "showdown", "--optimizers", "adam,adamm",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode != 0 and "Did you mean 'adam'" in proc.stderr
    assert not (tmp_path / "x").exists()


@needs_chromium
def test_showdown_report_renders_in_a_browser(tmp_path):
    cfg = config(tmp_path, optimizers=("adam",), epochs=1)
    results = run_showdown(cfg, quiet=True)
    build_report(results, {"dataset": "mnist", "description": "test"}, cfg.out)
    dom, console = render(tmp_path / "sd" / "report.html", tmp_path)
    assert console == []
    assert dom.count('class="main-svg"') >= 6  # six charts drawn
    assert json.loads((tmp_path / "sd" / "showdown.json").read_text())["showdown_id"] == cfg.showdown_id


def test_parallel_runs_give_the_sequential_results(tmp_path, monkeypatch):
    """Two worker processes, one thread each: every run as if trained here with one thread; a worker
    trains the recipe this process planned (here an edited one), not one rebuilt from its own modules."""
    from dataclasses import replace

    from optimlab.showdown import runner

    real = runner.lecture_recipe
    monkeypatch.setattr(runner, "lecture_recipe", lambda row, convention="keras": (
        replace(real(row, convention), hyper={"learning_rate": 0.05}) if row == "sgd" else real(row, convention)))
    parallel = run_showdown(config(tmp_path / "par", jobs=2), quiet=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = run_showdown(config(tmp_path / "seq", jobs=1), quiet=True)
    finally:
        torch.set_num_threads(threads)
    for row in ("adam", "sgd"):
        a = parallel["lecture"][row][0]["history"]
        b = sequential["lecture"][row][0]["history"]
        assert a["config"]["threads"] == 1
        assert [e["val_loss"] for e in a["epochs"]] == [e["val_loss"] for e in b["epochs"]]
        assert (tmp_path / "par" / "sd" / "runs" / f"{run_key('lecture', runner.lecture_recipe(row), 0)}.json").exists()
    assert "learning_rate=0.05" in parallel["lecture"]["sgd"][0]["history"]["config"]["recipe"]
    again = run_showdown(config(tmp_path / "par", jobs=2), quiet=True)  # all finished: nothing rerun
    assert again["lecture"]["adam"][0]["run_id"] == parallel["lecture"]["adam"][0]["run_id"]


def test_jobs_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        config(tmp_path, jobs=0)


def test_post_adam_rows_train_and_a_row_that_cannot_fails_before_training(tmp_path):
    results = run_showdown(config(tmp_path, optimizers=("muon", "lion"), epochs=1), quiet=True)
    muon = results["lecture"]["muon"][0]
    assert muon["label"] == "Muon (+AdamW)" and math.isfinite(muon["history"]["epochs"][-1]["val_loss"])
    from optimlab.showdown.recipes import Recipe
    from optimlab.showdown.runner import _check_recipes

    with pytest.raises(ValueError, match="row 'bad'.*cannot train the lecture's CNN: .*Muon orthogonalises 2-D"):
        _check_recipes([Recipe("bad", "Bad", "muon", "torch", describe="plain Muon")])


def _fits(monkeypatch) -> list[str]:
    """The run names that `fit` trains from now on (a run read back from disk is not trained)."""
    import optimlab.train as train_module

    names, real_fit = [], train_module.fit
    monkeypatch.setattr(train_module, "fit",
                        lambda *a, **k: names.append(k["name"].split("/", 1)[1]) or real_fit(*a, **k))
    return names


def _val_losses(result: dict) -> list[float]:
    return [e["val_loss"] for e in result["history"]["epochs"]]


def test_an_edited_recipe_reruns_and_an_unchanged_one_is_read_back(tmp_path, monkeypatch):
    from dataclasses import replace

    from optimlab.cli import main
    from optimlab.showdown import BEYOND, runner

    cfg = config(tmp_path, epochs=1, beyond=True)
    first = run_showdown(cfg, quiet=True)
    # edit the beyond recipe of one row (its rate) and the lecture recipe of the other (SGD's rate)
    monkeypatch.setitem(BEYOND, "adam", replace(BEYOND["adam"], hyper={**BEYOND["adam"].hyper, "lr": 1e-2}))
    real = runner.lecture_recipe
    monkeypatch.setattr(runner, "lecture_recipe", lambda key, convention="keras": (
        replace(real(key, convention), hyper={"learning_rate": 0.05}) if key == "sgd" else real(key, convention)))
    fits = _fits(monkeypatch)
    second = run_showdown(cfg, quiet=True)
    assert sorted(name.rsplit("-", 2)[0] for name in fits) == ["beyond-adam", "lecture-sgd"]  # the edited rows only
    for table, row in (("lecture", "adam"), ("beyond", "sgd")):  # unchanged: read back
        assert second[table][row][0]["run_id"] == first[table][row][0]["run_id"]
    for table, row in (("lecture", "sgd"), ("beyond", "adam")):  # edited: a new run, new numbers, new recipe text
        old, new = first[table][row][0], second[table][row][0]
        assert new["run_id"] != old["run_id"] and _val_losses(new) != _val_losses(old)
        assert new["recipe"] != old["recipe"]
    assert "learning_rate=0.05" in second["lecture"]["sgd"][0]["recipe"]
    assert "adamw(lr=0.01," in second["beyond"]["adam"][0]["recipe"]

    # the run store holds both versions of the edited rows; the rebuilt report shows the latest only
    out = tmp_path / "rebuilt"
    assert main(["report", cfg.showdown_id, "--store", str(tmp_path / "sd" / "runs.sqlite"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert " ± " not in md  # one seed per row, not the old and the new run averaged as two seeds
    assert second["beyond"]["adam"][0]["recipe"] in md and first["beyond"]["adam"][0]["recipe"] not in md


def test_an_edited_recipe_does_not_resume_the_old_recipes_checkpoint(tmp_path, monkeypatch):
    from dataclasses import replace

    from optimlab.showdown import runner

    cfg = config(tmp_path, optimizers=("sgd",))
    with pytest.raises(KeyboardInterrupt):  # sgd stops in its second epoch, a checkpoint on disk
        run_showdown(cfg, quiet=True, callbacks=[InterruptAt(11)])
    assert list((tmp_path / "sd" / "checkpoints").glob("*.pt"))
    real = runner.lecture_recipe
    monkeypatch.setattr(runner, "lecture_recipe", lambda key, convention="keras": replace(
        real(key, convention), hyper={"learning_rate": 0.05}))
    edited = run_showdown(cfg, quiet=True)["lecture"]["sgd"][0]
    clean = run_showdown(config(tmp_path / "clean", optimizers=("sgd",)), quiet=True)["lecture"]["sgd"][0]
    assert _val_losses(edited) == _val_losses(clean)  # trained from the start, at the new rate


def test_rows_beyond_the_lecture_build_the_report(tmp_path, monkeypatch):
    """--optimizers adam,lion --beyond: lion's row shows "—" for the lecture's columns, its recipe renders."""
    from optimlab.cli import main

    out = tmp_path / "sd"
    assert main(["showdown", "--optimizers", "adam,lion", "--beyond", "--quick", "--batch-size", "32", "--jobs", "1",
                 "--quiet", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    lecture, beyond = md.split("Beyond the lecture")
    lion = [line.split("|")[1:-1] for line in lecture.splitlines() if line.startswith("| Lion ")]
    assert len(lion) == 1 and [lion[0][i].strip() for i in (1, 3, 5, 13)] == ["—"] * 4  # no lecture numbers
    lion = [line.split("|")[1:-1] for line in beyond.splitlines() if line.startswith("| Lion ")]
    assert len(lion) == 1 and lion[0][1].strip() == "Lion + warm-up + cosine"  # lion's own recipe

    # a BEYOND entry for a row the lecture does not have, and a row with no known recipe
    from optimlab.showdown import BEYOND, Recipe

    monkeypatch.setitem(BEYOND, "adafactor", Recipe("adafactor", "Adafactor, lr 1e-2", "adafactor", "torch",
                                                    {"lr": 1e-2}, describe="a test recipe"))
    monkeypatch.delitem(BEYOND, "lion", raising=False)
    from optimlab.showdown.summary import beyond_notes, beyond_table

    results = run_showdown(config(tmp_path / "more", optimizers=("adafactor", "lion"), epochs=1, beyond=True),
                           quiet=True)
    assert set(results["beyond"]) == {"adafactor"}
    _, rows = beyond_table(results["lecture"], results["beyond"])
    assert [row[:2] for row in rows] == [["Adafactor", "Adafactor, lr 1e-2"]]
    assert "No known recipe for Lion" in " ".join(beyond_notes(results["lecture"], results["beyond"]))


def test_every_registered_optimizer_is_a_row_that_builds(tmp_path):
    """Each name of optimlab.optim.available() builds on the lecture's CNN, in either convention."""
    import optimlab.optim as oo
    from optimlab.showdown.runner import _check_recipes, recipes

    for convention in ("keras", "torch"):
        cfg = config(tmp_path, optimizers=tuple(oo.available()), convention=convention, beyond=True)
        tables = recipes(cfg)
        _check_recipes(tables["lecture"] + tables["beyond"])
        assert [r.key for r in tables["lecture"]] == oo.available()
    # the rows that need more than the defaults (NAG has no default rate; SAM and Lookahead wrap another) train
    results = run_showdown(config(tmp_path, optimizers=("nag", "sam", "lookahead"), epochs=1), quiet=True)
    for row, runs in results["lecture"].items():
        assert math.isfinite(runs[0]["history"]["epochs"][-1]["val_loss"]), row


def test_the_printed_notes_say_which_rows_are_below_the_lecture():
    """The sentence under the table names only the rows below the lecture's accuracy, and says so."""
    from optimlab.showdown.summary import _below, lecture_table

    def runs(label, acc):
        epochs = [{"epoch": 1, "val_acc": acc, "val_loss": 0.1, "time_s": 1.0}]
        return [{"label": label, "recipe": "r", "eval_train_acc": acc,
                 "history": {"epochs": epochs, "status": "done"}}]

    _, rows, notes = lecture_table({"momentum": runs("SGD w/ Momentum", 0.9833), "sgd": runs("SGD", 0.9432)})
    assert len(rows) == 2 and len(notes) == 1 and notes[0].startswith("SGD: 0.9432 vs the lecture's 0.9693")
    assert _below(notes) == "Below the lecture's accuracy: " + notes[0]
