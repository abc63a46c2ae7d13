"""The benchmark report, from a run store written by hand: the numbers in its tables are the ones
the measures give, an unfinished benchmark still renders and says what is missing, the store is
not changed, and the page renders in a real browser without console errors."""

from __future__ import annotations

import time

import pytest

from optimlab.benchmark import measures as M
from optimlab.benchmark.report import build_report
from optimlab.store import RunStore
from tests.browser import needs_chromium, render

BID = "bm-0000test"
SEEDS = [1, 2, 3]
WORKLOADS = [
    {"name": "acc", "title": "Accuracy toy", "description": "a classifier", "metric": "accuracy", "mode": "max",
     "batch_size": 32, "steps": 30, "eval_every": 10, "optimum": None, "source": "hand-made",
     "model": {"kind": "mlp", "hidden": 16}, "data": {"name": "blobs", "n": 600}},
    {"name": "loss", "title": "Loss toy", "description": "a regression", "metric": "loss", "mode": "min",
     "batch_size": 40, "steps": 30, "eval_every": 10, "optimum": 0.01, "source": "hand-made",
     "model": {"kind": "linear"}, "data": {"name": "gauss"}},
]
OPTIMIZERS = ["adam", "momentum", "sgd"]
SPACES = {o: [{"name": "lr", "low": 1e-4, "high": 1.0, "log": True, "default": 1e-3},
              {"name": "warmup", "low": 0.0, "high": 0.1, "log": False, "default": 0.0}] for o in OPTIMIZERS}

# tuning trials: (lr, final val); None = diverged
TUNE = {
    ("acc", "adam"): [(1e-3, 0.90), (1e-2, 0.95), (1e-1, None)],  # selected: trial 1
    ("acc", "momentum"): [(0.1, 0.94), (0.01, 0.94), (1.0, 0.5)],  # tie: trial 0
    ("acc", "sgd"): [(0.5, 0.85), (0.05, 0.80), (0.005, 0.6)],  # trial 0
    ("loss", "adam"): [(1e-3, 0.25), (1e-2, 0.2), (1e-1, 0.5)],  # trial 1
    ("loss", "momentum"): [(0.3, 0.3), (0.03, 0.35), (3.0, None)],  # trial 0
    ("loss", "sgd"): [(0.1, 0.1), (0.01, 0.15), (1.0, 0.2)],  # trial 0
}
# confirm seeds 1, 2, 3: (validation curve at steps 10, 20, 30; test metric); None curve value = diverged
CONFIRM = {
    # acc: medians of the final values: adam 0.92, momentum 0.93 -> target 0.93 from momentum
    ("acc", "adam"): [([0.5, 0.8, 0.90], 0.89), ([0.5, 0.85, 0.92], 0.91), ([0.6, 0.93, 0.94], 0.93)],
    ("acc", "momentum"): [([0.6, 0.9, 0.91], 0.92), ([0.7, 0.93, 0.93], 0.93), ([0.93, 0.94, 0.95], 0.94)],
    ("acc", "sgd"): [([0.5, 0.7, 0.80], 0.80), ([0.5, 0.8, 0.85], 0.84), ([0.5, None], None)],
    # loss: medians adam 0.22, momentum 0.30 -> target 0.22 from adam (sgd is better but no baseline)
    ("loss", "adam"): [([1.0, 0.5, 0.20], 0.21), ([1.0, 0.22, 0.22], 0.23), ([0.9, 0.6, 0.24], 0.25)],
    ("loss", "momentum"): [([1.0, 0.5, 0.30], 0.31), ([1.0, 0.5, 0.25], 0.26), ([1.0, 0.5, 0.35], 0.36)],
    ("loss", "sgd"): [([0.2, 0.15, 0.10], 0.11), ([0.5, 0.2, 0.12], 0.13), ([0.3, 0.21, 0.14], 0.15)],
}
TIME_S = {"acc": 1.0, "loss": 2.0}


def _meta(trials=3):
    return {"kind": "benchmark", "benchmark": BID, "preset": "test", "budget": "tuned", "trials": trials,
            "seeds": SEEDS, "workloads": WORKLOADS, "optimizers": OPTIMIZERS, "spaces": SPACES,
            "schedule": "cosine", "sampler": "optuna QMCSampler (scrambled Sobol), seed 0",
            "machine": {"host": "testhost", "platform": "Linux", "cpu": "Test CPU", "cores": 2, "torch": "2.x",
                        "workers": 1, "threads_per_worker": 2}}


def _add_run(db, w, o, phase, trial, seed, lr, curve, test, *, selected=None, status=None, run_id=None):
    key = "val_acc" if w == "acc" else "val_loss"
    rid = run_id or f"{BID}/{w}-{o}-{phase}{trial}-s{seed}"
    config = {"benchmark": BID, "workload": w, "optimizer": o, "phase": phase, "trial": trial,
              "params": {"lr": lr, "warmup": 0.0}, "seed": seed, "threads": 1, "cpus": [0], "load": [0.5, 0.4, 0.3]}
    if selected is not None:
        config["selected_trial"] = selected
    db.start_run(rid, config, name=rid)
    for i, v in enumerate(curve):
        db.log_epoch(rid, {"epoch": i + 1, "step": 10 * (i + 1), "train_loss": 1.0, "val_loss": v if key == "val_loss"
                           else 1 - (v or 0), "val_acc": v if key == "val_acc" else None, "time_s": TIME_S[w]})
    if status == "running":
        return rid
    diverged = curve[-1] is None
    db.finish_run(rid, status=status or ("nonfinite" if diverged else "completed"),
                  summary={"val_metric": None if diverged else curve[-1], "test_metric": test,
                           "test_loss": test, "test_accuracy": test if w == "acc" else None, "wall_s": 3.0})
    return rid


def make_store(path, *, complete=True):
    """The fake benchmark; ``complete=False`` leaves out loss/sgd's confirm runs and one tuning trial,
    and leaves one run running."""
    db = RunStore(path)
    db.start_run(BID, _meta(), name="benchmark")
    db.start_run("other-run", {"name": "an ordinary fit"}, name="other")
    # an older finished run of a re-run trial: the newest one (below) is the one read
    _add_run(db, "acc", "momentum", "confirm", 0, 1, 0.1, [0.99, 0.99, 0.99], 0.99, selected=0,
             run_id=f"{BID}/old-duplicate")
    time.sleep(0.01)
    for (w, o), trials in TUNE.items():
        for t, (lr, val) in enumerate(trials):
            if not complete and (w, o, t) == ("acc", "adam", 2):
                _add_run(db, w, o, "tune", t, 0, lr, [0.5], None, status="running")
                continue
            _add_run(db, w, o, "tune", t, 0, lr, [val], None)
    for (w, o), runs in CONFIRM.items():
        if not complete and (w, o) == ("loss", "sgd"):
            continue
        mode = "max" if w == "acc" else "min"
        best = M.select_best([{"trial": t, "val": v} for t, (_, v) in enumerate(TUNE[w, o])], mode)
        lr = TUNE[w, o][best["trial"]][0]
        for seed, (curve, test) in zip(SEEDS, runs):
            _add_run(db, w, o, "confirm", seed - 1, seed, lr, curve, test, selected=best["trial"])
    if complete:
        db.finish_run(BID, status="completed", summary={"wall_s": 123.0, "load": [0.5, 0.4, 0.3]})
    db.close()
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    store = make_store(tmp / "runs.sqlite")
    before = store.read_bytes()
    report, printed = build_report(store, tmp / "out")
    return {"tmp": tmp, "store": store, "before": before, "report": report, "printed": printed,
            "md": (tmp / "out" / "report.md").read_text()}


def _table(md: str, title: str) -> list[list[str]]:
    """The rows of the Markdown table under ``## title`` (cells stripped; header first)."""
    lines = md.split(f"## {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines if not line.startswith("|---")]


def _ci(values):
    mean, half, n = M.mean_ci(values)
    return f"{mean:.4g} ± {half:.2g} (n={n})"


def test_files_exist_and_store_is_unchanged(built):
    out = built["tmp"] / "out"
    assert (out / "report.html").stat().st_size > 100_000 and (out / "report.md").exists()
    charts = [b.key for kind, b in built["report"].blocks if kind == "chart"]
    assert len(charts) == len(set(charts)) == 8
    for key in charts:
        assert (out / f"{key}.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("*.tmp"))
    assert built["store"].read_bytes() == built["before"]


def test_what_was_run(built):
    facts = dict(row for row in _table(built["md"], "What was run")[1:])
    assert facts["Preset"] == "test" and facts["Budget"] == "tuned"
    assert facts["Seeds of the selected setting"] == "1, 2, 3"
    assert facts["Workers × threads per worker"] == "1 × 2" and "Test CPU (2 cores)" in facts["CPU"]
    assert facts["Status"].startswith("completed: 36 of 36 runs finished")  # 2 × 3 × (3 + 3); the duplicate once
    assert facts["Wall time (invocations that ran to the end)"].startswith("0:02:03") and facts["Hosts that ran the runs (runs)"].endswith("(36)")
    assert "Complete: all 36 runs finished." in built["md"] and "Missing runs" not in built["md"]
    assert "| momentum | lr | 0.0001 … 1 | log | 0.001 |" in built["md"]
    workloads = _table(built["md"], "Workloads")
    assert workloads[1][:4] == ["acc", "mlp (hidden=16)", "blobs (n=600)", "accuracy"]
    assert workloads[2][3:5] == ["loss", "lower is better"] and workloads[2][-1] == "0.01"


def test_accuracy_workload_table(built):
    rows = _table(built["md"], "Results: Accuracy toy (acc)")
    assert [r[0] for r in rows[1:]] == ["momentum", "adam", "sgd"]  # mean test 0.93, 0.91, 0.82
    momentum, adam, sgd = rows[1:]
    assert momentum[1] == "lr=0.1, warmup=0 (trial 0)"  # the tie 0.94 / 0.94 goes to trial 0
    assert adam[1] == "lr=0.01, warmup=0 (trial 1)"
    assert momentum[2] == _ci([0.92, 0.93, 0.94]) and momentum[3] == _ci([0.91, 0.93, 0.95])
    # target 0.93: momentum reaches it at step 20 (seed 2) and 10 (seed 3), never on seed 1 -> median 20
    assert momentum[4] == "20 (2/3 seeds reached)" and momentum[5] == "2 s"
    assert adam[4] == "median not reached (1/3 seeds reached)" and adam[5] == "—"
    # sgd's third seed diverged: two finite results, counted
    assert sgd[2] == _ci([0.80, 0.84]) and sgd[2].endswith("(n=2)") and sgd[6] == "1/3"
    assert ("Target: validation accuracy ≥ 0.93, the median final validation accuracy of tuned momentum's confirm "
            "seeds") in built["md"]
    # the old duplicate (0.99 everywhere) is not read: it would have set the target to 0.99
    assert M.target({"adam": [0.90, 0.92, 0.94], "momentum": [0.91, 0.93, 0.95]}, "max") == (0.93, "momentum")


def test_loss_workload_table(built):
    rows = _table(built["md"], "Results: Loss toy (loss)")
    assert [r[0] for r in rows[1:]] == ["sgd", "adam", "momentum"]  # lower test loss first: 0.13, 0.23, 0.31
    sgd, adam, momentum = rows[1:]
    assert "Target: validation loss ≤ 0.22, the median final validation loss of tuned adam's" in built["md"]
    # target 0.22: sgd reaches it at 10, 20, 20 -> median 20; 2 s per evaluation -> 2, 4, 4 s -> 4 s
    assert sgd[4] == "20 (3/3 seeds reached)" and sgd[5] == "4 s"
    assert adam[4] == "30 (2/3 seeds reached)" and adam[5] == "6 s"  # 30, 20, never -> median 30
    assert momentum[4] == "median not reached (0/3 seeds reached)" and momentum[6] == "0/3"
    assert sgd[2] == _ci([0.11, 0.13, 0.15])


def test_profiles_tunability_and_lr_tables(built):
    md = built["md"]
    # steps: acc: only momentum reaches (20); loss: sgd 20, adam 30 -> ratio 1.5, momentum failed
    steps = {r[0]: r[1:] for r in _table(md, "Performance ratios: steps to target")[1:]}
    assert steps == {"adam": ["failed", "1.5", "0/2", "1/2"], "momentum": ["1", "failed", "1/2", "1/2"],
                     "sgd": ["failed", "1", "1/2", "1/2"]}
    # test cost: acc error medians adam 0.09, momentum 0.07, sgd 0.2 (third seed diverged = inf);
    # loss medians adam 0.23, momentum 0.31, sgd 0.13
    test = {r[0]: r[1:3] for r in _table(md, "Performance ratios: final test cost")[1:]}
    assert test["momentum"] == ["1", f"{0.31 / 0.13:.3g}"]
    assert test["adam"] == [f"{0.09 / 0.07:.3g}", f"{0.23 / 0.13:.3g}"]
    assert test["sgd"] == [f"{0.2 / 0.07:.3g}", "1"]
    assert "How to read a performance profile" in md
    lr = {(r[0], r[1]): r[2:] for r in _table(md, "Learning-rate sensitivity")[1:]}
    # acc/adam: best 0.95 at lr 0.01, nothing else within 0.01 -> width 0; one trial diverged
    assert lr["acc", "adam"] == ["0.01", "0.95", "0.01 … 0.01", "0.00", "1/2", "1"]
    # acc/momentum: 0.94 at 0.1 and 0.01 -> one decade
    assert lr["acc", "momentum"][3:5] == ["1.00", "2/3"]
    charts = {b.key: b for kind, b in built["report"].blocks if kind == "chart"}
    x, y = charts["tunability-acc"].series["momentum"]
    assert x == [1, 2, 3] and y == pytest.approx(M.tunability_curve([0.94, 0.94, 0.5], "max"))
    assert charts["lr-loss"].mode == "markers" and charts["profile-steps-to-target"].mode == "steps"
    assert set(charts["convergence-acc"].series) == {"adam (seed 1)", "momentum (seed 1)", "sgd (seed 1)",
                                                    "target (momentum)"}
    assert charts["convergence-acc"].series["momentum (seed 1)"] == ([10, 20, 30], [0.6, 0.9, 0.91])


def test_printed_summary(built):
    printed = built["printed"]
    assert printed.startswith(f"Benchmark {BID}: Complete")
    assert "| momentum | lr=0.1, warmup=0 (trial 0) |" in printed and "Target: validation loss ≤ 0.22" in printed


def test_incomplete_benchmark_renders_and_says_what_is_missing(tmp_path):
    store = make_store(tmp_path / "runs.sqlite", complete=False)
    _, printed = build_report(store, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**Incomplete**: 32 of 36 runs finished; 4 missing." in md and "Incomplete" in printed
    missing = _table(md, "Missing runs: this benchmark is incomplete")
    assert missing[1:] == [["acc", "adam", "2/3", "3/3"], ["loss", "sgd", "3/3", "0/3"]]
    facts = dict(row for row in _table(md, "What was run")[1:])
    assert facts["Status"].startswith("running: 32 of 36") and "left out: 1 run that did not finish" in facts["Status"]
    assert "1 duplicate run of the same trial and seed" in facts["Status"]  # the old 0.99 copy: not read
    assert facts["Wall time (invocations that ran to the end)"].startswith("—")
    rows = {r[0]: r for r in _table(md, "Results: Loss toy (loss)")[1:]}
    assert rows["sgd"][1] == "lr=0.1, warmup=0 (trial 0), not re-run yet" and rows["sgd"][2] == "—"
    assert list(rows)[-1] == "sgd"  # no test result: last


def test_newest_benchmark_is_the_default_and_errors_name_things(tmp_path):
    store = make_store(tmp_path / "runs.sqlite")
    with pytest.raises(ValueError, match=r"no benchmark 'bm-nope' in the run store .*runs\.sqlite.*bm-0000test"):
        build_report(store, tmp_path / "out", benchmark="bm-nope")
    report, _ = build_report(store, tmp_path / "out", benchmark=BID)
    assert report.title == f"Optimizer benchmark {BID}"
    empty = tmp_path / "empty.sqlite"
    db = RunStore(empty)
    db.start_run("r1", {"name": "fit"}, name="r1")
    db.close()
    with pytest.raises(ValueError, match=r"no benchmark in the run store .*empty\.sqlite"):
        build_report(empty, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()  # nothing written
    with pytest.raises(FileNotFoundError, match="missing.sqlite"):
        build_report(tmp_path / "missing.sqlite", tmp_path / "out3")


@needs_chromium
def test_page_renders_without_console_errors(built):
    dom, errors = render(built["tmp"] / "out" / "report.html", built["tmp"])
    assert errors == []
    keys = [b.key for kind, b in built["report"].blocks if kind == "chart"]
    for key in keys:
        assert f'id="chart-{key}"' in dom
    assert dom.count('class="main-svg"') >= len(keys)  # plotly drew every chart
    assert "Results: Accuracy toy (acc)" in dom


def test_chart_keys_are_unique_and_filesystem_safe():
    from optimlab.benchmark.report import _Keys

    keys = _Keys()
    assert keys("tunability", "cifar/10 small") == "tunability-cifar-10-small"
    assert keys("tunability", "cifar-10 small") == "tunability-cifar-10-small-2"  # a collision after cleaning
    assert keys("lr", "ünïcode") == "lr-n-code" and keys("", "") == "chart"


def test_summary_across_workloads_ranks_each_workload_and_sorts_by_mean_rank(built):
    rows = _table(built["md"], "Summary across workloads")
    assert rows[0] == ["optimizer", "acc test accuracy", "loss test loss", "mean rank"]
    # acc: momentum 0.93 (1), adam 0.91 (2), sgd 0.82 (3); loss: sgd 0.13 (1), adam 0.23 (2), momentum 0.31 (3)
    table = {r[0]: r[1:] for r in rows[1:]}
    assert table["momentum"][0].endswith("(1)") and table["momentum"][1].endswith("(3)")
    assert table["sgd"][0].endswith("(3)") and table["sgd"][1].endswith("(1)")
    assert table["adam"] == [table["adam"][0], table["adam"][1], "2.0"] and table["adam"][0].endswith("(2)")
    assert [r[-1] for r in rows[1:]] == ["2.0", "2.0", "2.0"]
