"""The main job of ``make demo``: one small model, every optimizer, one comparison table.

Every optimizer trains the same MLP from the same initial weights on the same batches
(real MNIST by default), so the table compares optimizers and nothing else.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch
from torch import nn

import optimlab.optim as oo

# Rates in the range the lectures recommend for each method on a problem of this size.
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "nag": 0.05, "adagrad": 0.05, "rmsprop": 1e-3,
              "adadelta": 1.0, "adam": 1e-3, "adamw": 1e-3, "adamax": 2e-3, "nadam": 2e-3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--optimizers", default=",".join(DEFAULT_LR),
                        help="comma-separated names (see `optimlab optimizers`)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=20000, help="training examples used (0 = all)")
    parser.add_argument("--seed", type=int, default=0)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    model.train()
    return nn.functional.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def compare(names: list[str], train: tuple, val: tuple, *, epochs: int, batch_size: int, seed: int) -> list[dict]:
    """Train one copy of the same initial model per optimizer; return one result row each."""
    torch.manual_seed(seed)
    initial = _mlp()
    x, y = train
    order = [torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + e)) for e in range(epochs)]
    rows = []
    for name in names:
        model = copy.deepcopy(initial)
        lr = DEFAULT_LR.get(name, 1e-3)
        opt = oo.create(name, model.parameters(), lr=lr)
        start, steps, last_losses = time.perf_counter(), 0, []
        for perm in order:
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                last_losses = (last_losses + [loss.item()])[-50:]
        seconds = time.perf_counter() - start
        val_loss, val_acc = _evaluate(model, *val)
        train_loss = sum(last_losses) / len(last_losses)
        rows.append(dict(optimizer=name, lr=lr, train_loss=train_loss, val_loss=val_loss, val_acc=val_acc,
                         seconds=seconds, ms_per_step=1e3 * seconds / steps,
                         diverged=not math.isfinite(train_loss)))
        print(f"  {name:<9} val acc {val_acc:.4f}  ({seconds:.1f} s)", file=sys.stderr)
    return rows


def format_table(rows: list[dict]) -> str:
    header = ["optimizer", "lr", "train loss", "val loss", "val acc", "time (s)", "ms/step"]
    lines = [header]
    for r in sorted(rows, key=lambda r: -r["val_acc"] if math.isfinite(r["val_loss"]) else 1):
        lines.append([r["optimizer"], f"{r['lr']:g}", f"{r['train_loss']:.4f}", f"{r['val_loss']:.4f}",
                      f"{r['val_acc']:.4f}", f"{r['seconds']:.1f}", f"{r['ms_per_step']:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from optimlab import data

    names = [n.strip().lower() for n in args.optimizers.split(",") if n.strip()]
    for n in names:
        oo.get(n)  # an unknown name fails here, before any training
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        ds = data.load(args.dataset)
    except data.DataError as err:
        print(f"optimlab demo: cannot load {args.dataset}:\n{err}", file=sys.stderr)
        return 2
    x, y = ds.train
    if args.train_size:
        x, y = x[:args.train_size], y[:args.train_size]
    print(f"{args.dataset}: {len(x)} training / {len(ds.val[0])} validation images ({ds.source}); "
          f"MLP 784-128-10, {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}", file=sys.stderr)
    rows = compare(names, (x, y), ds.val, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    print(format_table(rows))
    return 0
