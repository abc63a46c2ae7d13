"""One epoch of the lectures' CNN on MNIST, timed in one run, several ways.

    python bench/train_epoch.py [--dataset mnist] [--threads N] [--repeats 1]
                                [--precision 32|bf16|fp16] [--accumulate K]
                                [--sharpness-every N]

The model: Conv2D(32, 3x3, ReLU) -> MaxPool 2x2 -> Dropout 0.25 -> Flatten ->
Dense(10); batch 64; Adam (lr 1e-3); one epoch over the 50,000 training
images; accuracy on the 10,000 validation images afterwards. Contenders:

* optimlab.train.fit — ``optimlab.models.lecture_cnn()``, monitoring on
  (per-step gradient norms, sampled per-layer statistics), run store on.
* optimlab.train.fit with ``monitor=False`` — what monitoring costs.
* bare loop, same model — a hand-written loop over index slices, no
  monitoring: the floor for optimlab's loop.
* DataLoader loop, same model — the typical user loop with optimlab's model.
* textbook PyTorch — ``nn.Sequential`` of torch's layers (NCHW, ``nn.Dropout``),
  ``torch.optim.Adam``, ``DataLoader(TensorDataset, shuffle=True)``: the
  typical user loop, and a bare loop over the same textbook model.
* Keras 3 on TensorFlow (``pip install -e '.[bench]'``; skipped when missing),
  the framework the lectures used, ``model.fit(..., batch_size=64, epochs=1)``.

``--precision``, ``--accumulate`` and ``--sharpness-every`` apply to the optimlab
contenders only: ``fit(..., precision=P)``, ``fit(batch_size=64 // K, accumulate=K)`` (the
same 64-sample steps, in K micro-batches) and ``fit(..., sharpness_every=N)`` (λ_max every N
steps). Compare precisions with e.g.
``--skip bare,loader_fast,loader,bare_textbook,keras`` run once per precision.

Each contender runs in a fresh process (``--same-process`` to share one), and
its time includes its own first-call costs (oneDNN primitive creation,
Keras's graph tracing), as a user running one epoch sees them; loading the
data and importing the frameworks are not timed.
Numbers on a shared machine are noisy: compare the ratios, and use
``--repeats`` to keep each contender's best time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

BATCH, LR, SEED = 64, 1e-3, 0
FIT = {"precision": "32", "accumulate": 1, "sharpness_every": None}  # --precision / --accumulate, for the optimlab contenders
CPU: dict[str, float] = {}  # CPU seconds (all threads) of the last timed region


class timed:
    """``with timed() as t: ...`` → ``t.seconds`` (wall) and ``CPU["seconds"]`` (process CPU time)."""

    def __enter__(self):
        self.start, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        CPU["seconds"] = time.process_time() - self.cpu


def textbook_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
                         nn.Linear(32 * 13 * 13, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(x), 1000))
    model.train()
    return correct / len(x)


def run_optimlab(train, val, monitor=True):
    from optimlab import models, optim
    from optimlab.train import fit

    torch.manual_seed(SEED)
    model = models.lecture_cnn()
    opt = optim.create("adam", model.parameters(), lr=LR, fused=True)
    with tempfile.TemporaryDirectory() as tmp:
        with timed() as t:
            history = fit(model, opt, train, epochs=1, batch_size=BATCH // FIT["accumulate"], seed=SEED, quiet=True,
                          monitor=monitor, store=os.path.join(tmp, "runs.sqlite"), precision=FIT["precision"],
                          accumulate=FIT["accumulate"], sharpness_every=FIT["sharpness_every"])
    return t.seconds, accuracy(model, *val), history


def _bare(model, opt, x, y):
    g = torch.Generator().manual_seed(SEED)
    perm = torch.randperm(len(x), generator=g)
    model.train()
    for i in range(0, len(x), BATCH):
        idx = perm[i:i + BATCH]
        loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _loader(model, opt, x, y):
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    model.train()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()


def run_torch(train, val, *, fast_model: bool, loop: str):
    from optimlab import models, optim

    torch.manual_seed(SEED)
    if fast_model:
        model = models.lecture_cnn()
        opt = optim.create("adam", model.parameters(), lr=LR, fused=True)
    else:
        model = textbook_cnn()
        opt = torch.optim.Adam(model.parameters(), lr=LR)
    with timed() as t:
        (_bare if loop == "bare" else _loader)(model, opt, *train)
    return t.seconds, accuracy(model, *val), None


def keras_available() -> str | None:
    try:
        import importlib.util

        if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
            return None
    except ValueError:
        return None
    return "ok"


def run_keras(train, val):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"keras was already imported with the {keras.backend.backend()!r} backend; "
                           "run this benchmark with KERAS_BACKEND unset or 'tensorflow'")
    threads = torch.get_num_threads()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass
    keras.utils.set_random_seed(SEED)
    x = train[0].permute(0, 2, 3, 1).numpy()
    y = train[1].numpy()
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Dropout(0.25),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    with timed() as t:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=True, verbose=0)
    seconds = t.seconds
    _, acc = model.evaluate(val[0].permute(0, 2, 3, 1).numpy(), val[1].numpy(), batch_size=1000, verbose=0)
    return seconds, float(acc), f"keras {keras.__version__}, tensorflow {tf.__version__}"


CONTENDERS = [
    ("optimlab fit, monitoring on (lecture_cnn)", "optimlab", lambda tr, va: run_optimlab(tr, va)),
    ("optimlab fit, monitoring off", "optimlab_off", lambda tr, va: run_optimlab(tr, va, monitor=False)),
    ("bare loop, same model (lecture_cnn)", "bare", lambda tr, va: run_torch(tr, va, fast_model=True, loop="bare")),
    ("DataLoader loop, same model (lecture_cnn)", "loader_fast",
     lambda tr, va: run_torch(tr, va, fast_model=True, loop="loader")),
    ("DataLoader loop, textbook nn.Sequential", "loader",
     lambda tr, va: run_torch(tr, va, fast_model=False, loop="loader")),
    ("bare loop, textbook nn.Sequential", "bare_textbook",
     lambda tr, va: run_torch(tr, va, fast_model=False, loop="bare")),
]


def run_one(key: str, train, val) -> dict:
    """Run contender ``key`` once: its label, seconds, validation accuracy (and optimlab's diagnoses)."""
    if key == "keras":
        seconds, acc, versions = run_keras(train, val)
        return {"key": key, "label": f"Keras 3 on TensorFlow ({versions})", "seconds": seconds, "acc": acc,
                "cpu": CPU["seconds"]}
    label, _, fn = next(c for c in CONTENDERS if c[1] == key)
    if key.startswith("optimlab") and (FIT["precision"] != "32" or FIT["accumulate"] != 1
                                       or FIT["sharpness_every"]):
        label += (f" [precision {FIT['precision']}, accumulate {FIT['accumulate']}"
                  + (f", sharpness every {FIT['sharpness_every']}" if FIT["sharpness_every"] else "") + "]")
    seconds, acc, history = fn(train, val)
    out = {"key": key, "label": label, "seconds": seconds, "acc": acc, "cpu": CPU["seconds"]}
    if history is not None:
        out["diagnoses"] = [d.code for d in history.diagnoses]
    return out


def _isolated(key: str, args) -> dict:
    """Run one contender in a fresh Python process (no state shared with the others:
    allocator settings, thread pools, memory fragmentation, imported frameworks)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--only", key, "--dataset", args.dataset]
    if args.train_size:
        cmd += ["--train-size", str(args.train_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--precision", args.precision, "--accumulate", str(args.accumulate)]
    if args.sharpness_every:
        cmd += ["--sharpness-every", str(args.sharpness_every)]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    if args.passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"contender {key} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--threads", type=int, default=None, help="torch / TF threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the contenders; keep each one's best")
    parser.add_argument("--skip", default="", help="comma-separated contender keys to skip "
                        "(optimlab, optimlab_off, bare, loader_fast, loader, bare_textbook, keras)")
    parser.add_argument("--passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE for the contenders (fresh processes only): on a busy machine, OpenMP threads that "
                             "spin while waiting for a descheduled sibling make torch many times slower")
    parser.add_argument("--same-process", action="store_true",
                        help="run every contender in this process (default: each in a fresh process)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="use only the first N training images (a quick check; default: all 50,000)")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "fp16"],
                        help="fit(precision=...) for the optimlab contenders (default: 32)")
    parser.add_argument("--accumulate", type=int, default=1, choices=[1, 2, 4, 8, 16, 32, 64],
                        help="fit(batch_size=64 // K, accumulate=K) for the optimlab contenders (default: 1)")
    parser.add_argument("--sharpness-every", type=int, default=None,
                        help="fit(sharpness_every=N) for the optimlab contenders: what tracking lambda_max costs")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one contender, JSON out
    args = parser.parse_args(argv)
    FIT.update(precision=args.precision, accumulate=args.accumulate, sharpness_every=args.sharpness_every)
    if args.threads:
        torch.set_num_threads(args.threads)
    from optimlab import data

    def load():
        ds = data.load(args.dataset)
        n = args.train_size or len(ds.train[1])
        return (ds.train[0][:n], ds.train[1][:n]), ds.val

    if args.only:
        print(json.dumps(run_one(args.only, *load())))
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    keys = [key for _, key, _ in CONTENDERS if key not in skip]
    keras_note = None
    if "keras" not in skip:
        if keras_available():
            keys.append("keras")
        else:
            keras_note = "Keras on TensorFlow: not installed (pip install -e '.[bench]')"
    train, val = load() if args.same_process else (None, None)
    print(f"{args.dataset}: {args.train_size or 50_000:,} training images, batch {BATCH}, Adam lr {LR}; torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} threads; "
          f"{'one process' if args.same_process else 'a fresh process per contender'}"
          f"{', OMP_WAIT_POLICY=PASSIVE' if args.passive else ''}; optimlab precision {args.precision}, "
          f"accumulate {args.accumulate}, sharpness every {args.sharpness_every}; load average {os.getloadavg()[0]:.1f}",
          file=sys.stderr)
    best: dict[str, dict] = {}
    for round_ in range(args.repeats):  # rounds interleave the contenders, so load spikes hit all alike
        for key in keys:
            r = run_one(key, train, val) if args.same_process else _isolated(key, args)
            if key not in best or r["seconds"] < best[key]["seconds"]:
                best[key] = r
            extra = f", diagnoses: {', '.join(r['diagnoses']) or 'none'}" if "diagnoses" in r else ""
            print(f"  [{round_ + 1}/{args.repeats}] {r['label']}: {r['seconds']:.2f} s ({r['cpu']:.1f} s CPU), "
                  f"val acc {r['acc']:.4f}"
                  f"{extra} (load average {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    print(format_table(best, args.train_size or 50_000))
    if keras_note:
        print(keras_note)
    return 0


def format_table(results: dict[str, dict], n: int = 50_000) -> str:
    """Markdown: each contender's best epoch time, its CPU time, accuracy, and optimlab's time over it."""
    ref = results.get("optimlab")
    lines = ["| loop | epoch (s) | ms/step | CPU (s) | val acc | optimlab / this |",
             "|---|---:|---:|---:|---:|---:|"]
    steps = -(-n // BATCH)
    for r in results.values():
        ratio = f"{ref['seconds'] / r['seconds']:.2f}" if ref else "-"
        lines.append(f"| {r['label']} | {r['seconds']:.2f} | {1e3 * r['seconds'] / steps:.2f} | {r['cpu']:.1f} "
                     f"| {r['acc']:.4f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
