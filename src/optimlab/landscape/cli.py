"""``optimlab landscape``: optimizers on 2-D test functions (table, PNG, GIF, HTML), the
lectures' claims as checked demonstrations, and loss surfaces of real networks.

    optimlab landscape --function rosenbrock --optimizers sgd,momentum,nag,adagrad,rmsprop,adam \\
        --steps 300 --out DIR
    optimlab landscape --demo all --out DIR
    optimlab landscape --network cnn --optimizers sgd,adam --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from optimlab.cliutil import (
    check, finite_float, float_list, int_at_least, name_list, non_negative_float, non_negative_int, output_dir,
    positive_float, positive_int,
)
from optimlab.landscape import functions as F

DEFAULT_OPTIMIZERS = "sgd,momentum,nag,adagrad,rmsprop,adam"
SCHEDULES = ("constant", "cosine", "step")
DEFAULT_OUT = "landscape"
NETWORK_LR = {"sgd": 0.05, "momentum": 0.01, "nag": 0.01, "adagrad": 0.01, "rmsprop": 1e-3,
              "adam": 1e-3, "adamw": 1e-3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--function", default="rosenbrock",
                        help=f"test function: {', '.join(F.available())} (default: %(default)s)")
    parser.add_argument("--optimizers", default=None, type=name_list,
                        help=f"comma-separated names, optimlab's or torch's ('torch.Adam'); "
                             f"default {DEFAULT_OPTIMIZERS} (sgd,adam with --network)")
    parser.add_argument("--steps", type=non_negative_int, default=300,
                        help="updates per optimizer (default: %(default)s)")
    # default None: the default directory is checked in run(), only when something is written
    parser.add_argument("--out", default=None, type=output_dir, help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--start", default=None, metavar="X,Y", type=start_point,
                        help="start point (write --start=-1.5,2 for a negative x); default: the function's")
    parser.add_argument("--lr", default=None, type=rates,
                        help="one learning rate for all, or per optimizer: sgd=0.001,adam=0.05")
    parser.add_argument("--tune", action="store_true",
                        help="search each optimizer's rate over its default × 0.1, 0.2, 0.5, 1, 2, 5, 10")
    parser.add_argument("--tol", type=positive_float, default=None, help="tolerance on f − f* for 'steps to tol'")
    parser.add_argument("--noise", type=non_negative_float, default=0.0,
                        help="gradient noise std (mini-batch stand-in)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--condition", type=finite_float, default=None, help="ravine: condition number (default 50)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="learning-rate schedule from each optimizer's rate over the run")
    parser.add_argument("--frames", type=positive_int, default=60, help="GIF frames (default: %(default)s)")
    parser.add_argument("--no-gif", action="store_true", help="skip the animation")
    parser.add_argument("--no-html", action="store_true", help="skip the interactive page")
    parser.add_argument("--list", action="store_true", help="list the functions and the demos")
    parser.add_argument("--demo", default=None, metavar="NAME",
                        help="run a lecture claim as a checked demonstration ('all' for every one)")
    net = parser.add_argument_group("real networks (--network)")
    net.add_argument("--network", choices=("cnn", "mlp"), default=None,
                     help="train the lectures' MNIST CNN (or the demo MLP) and slice its loss surface")
    net.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    net.add_argument("--epochs", type=positive_int, default=1)
    net.add_argument("--train-size", type=positive_int, default=10000, help="training images (default: %(default)s)")
    net.add_argument("--eval-size", type=positive_int, default=2000,
                     help="fixed subset the surfaces are evaluated on (default: %(default)s)")
    net.add_argument("--resolution", type=int_at_least(2), default=15,
                     help="random-slice grid side (default: %(default)s; 31 for the paper's picture)")
    net.add_argument("--pca-resolution", type=int_at_least(2), default=9,
                     help="PCA-slice grid side (default: %(default)s)")
    net.add_argument("--span", type=positive_float, default=1.0, help="random-slice half-width (default: %(default)s)")


def _error(message: str) -> int:
    print(f"optimlab landscape: error: {message}", file=sys.stderr)
    return 2


def start_point(text: str) -> tuple[float, float]:
    """``--start X,Y``: two finite numbers."""
    try:
        point = float_list(text, positive=False)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"must be X,Y (two finite numbers): {err}") from None
    if len(point) != 2:
        raise argparse.ArgumentTypeError(f"must be X,Y (two finite numbers), got {text!r}")
    return point


def rates(text: str) -> float | dict[str, float]:
    """``--lr``: one rate (a finite number >= 0) or ``name=rate,...``."""
    def rate(value: str) -> float:
        try:
            return non_negative_float(value)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"must be a rate >= 0 or name=rate,...; got {value!r} in {text!r}") from None

    if "=" not in text:
        return rate(text)
    out = {}
    for item in name_list(text):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"must be a rate >= 0 or name=rate,...; got {item!r} in {text!r}")
        out[name.strip()] = rate(value.strip())
    return out


def _parse_lr(given: float | dict[str, float] | None, names: list[str]) -> dict[str, float]:
    if given is None:
        return {}
    if not isinstance(given, dict):
        return dict.fromkeys(names, given)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"--lr names {unknown} are not among --optimizers {names}")
    return given


def _schedule(kind: str, steps: int):
    from optimlab import schedules as S
    from optimlab.landscape.specs import schedule_from_lr
    if kind == "cosine":
        return schedule_from_lr(lambda lr: S.CosineAnnealing(lr, period=max(steps, 1)))
    if kind == "step":
        return schedule_from_lr(lambda lr: S.step_decay(lr, step_size=max(steps // 3, 1), gamma=0.3))
    return None


def _names(given: tuple[str, ...] | None, default: str) -> list[str]:
    return list(given) if given is not None else default.split(",")


def write_outputs(comparison, out: Path, stem: str, *, frames: int, gif: bool, html: bool) -> list[Path]:
    """PNG (contour + surface), optional GIF and HTML, the table (.md) and the data (.json)."""
    from optimlab.landscape import plots
    out.mkdir(parents=True, exist_ok=True)
    written = [plots.plot(comparison, out / f"{stem}.png")]
    if gif:
        plots.animate(comparison, out / f"{stem}.gif", frames=frames)
        written.append(out / f"{stem}.gif")
    if html:
        from optimlab.landscape.html import write_html
        written.append(write_html(comparison, out / f"{stem}.html"))
    (out / f"{stem}.md").write_text(comparison.table() + "\n", encoding="utf-8")
    (out / f"{stem}.json").write_text(json.dumps(comparison.to_dict()), encoding="utf-8")
    return written + [out / f"{stem}.md", out / f"{stem}.json"]


def _run_function(args) -> int:
    from optimlab.landscape.specs import Spec, resolve
    from optimlab.landscape.trajectory import compare

    settings = {} if args.condition is None else {"condition": args.condition}
    function = F.get(args.function, **settings)
    names = _names(args.optimizers, DEFAULT_OPTIMIZERS)
    for n in names:
        resolve(n, function)  # an unknown name fails before any optimizer runs
    rates = _parse_lr(args.lr, names)
    schedule = _schedule(args.schedule, args.steps)
    specs = [Spec(n, lr=rates.get(n), schedule=schedule) for n in names]
    result = compare(function, specs, steps=args.steps, start=args.start,
                     tol=args.tol, tune=args.tune, noise=args.noise, seed=args.seed)
    print(result.table())
    print()
    for path in write_outputs(result, Path(args.out), function.name, frames=args.frames,
                              gif=not args.no_gif, html=not args.no_html):
        print(f"wrote {path}")
    return 0


def _run_demos(args) -> int:
    from optimlab.landscape import demos, plots
    names = list(demos.DEMOS) if args.demo == "all" else [demos.get(args.demo).name]
    out, failed, sheet = Path(args.out), 0, []
    for name in names:
        demo = demos.DEMOS[name]
        result, checks = demo.run()
        print(f"## {name}: {demo.claim}\n")
        print(result.table())
        print()
        for check in checks:
            print(check)
            failed += not check.holds
        print()
        for path in write_outputs(result, out, f"demo-{name}", frames=args.frames,
                                  gif=not args.no_gif, html=not args.no_html):
            print(f"wrote {path}")
        print()
        sheet.append((f"{name}: {demo.claim}", result))
    if len(names) > 1:
        print(f"wrote {plots.overview(sheet, out / 'demos.png')}")
    if failed:
        print(f"{failed} check(s) do not hold", file=sys.stderr)
    return 1 if failed else 0


def _run_network(args) -> int:
    from optimlab import data, optim
    from optimlab.landscape import network_study as NS

    names = _names(args.optimizers, "sgd,adam")
    for n in names:
        optim.get(n)  # before the data is loaded; networks take optimlab's names only
    rates = _parse_lr(args.lr, names)
    try:
        ds = data.load(args.dataset)
    except data.DataError as error:
        return _error(f"cannot load {args.dataset}:\n{error}")
    x, y = ds.train
    train = (x[:args.train_size], y[:args.train_size])
    evaluate = (x[:args.eval_size], y[:args.eval_size])
    val = (ds.val[0][:args.eval_size], ds.val[1][:args.eval_size])
    optimizers = {n: {"lr": rates.get(n, NETWORK_LR.get(n, 1e-3))} for n in names}
    print(f"{args.dataset} ({ds.source}): {len(train[0])} training images, surfaces on a fixed subset of "
          f"{len(evaluate[0])}, validation {len(val[0])}; {args.network}, {args.epochs} epoch(s)", file=sys.stderr)
    results = NS.study(NS.MODELS[args.network], optimizers, train, evaluate, val, epochs=args.epochs,
                       resolution=args.resolution, pca_resolution=args.pca_resolution, span=args.span,
                       seed=args.seed)
    out = Path(args.out)
    print(NS.table(results))
    print()
    for path in (NS.plot_line(results, out / f"{args.network}_line.png"),
                 NS.plot_slices(results, out / f"{args.network}_slices.png")):
        print(f"wrote {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from optimlab.landscape import demos
    if args.list:
        for name in F.available():
            print(f"{name:<14} {F.get(name).feature}")
        print()
        for name, demo in demos.DEMOS.items():
            print(f"--demo {name:<9} {demo.claim}")
        return 0
    if args.demo and args.network:
        return _error(f"--demo {args.demo} and --network {args.network} are different modes: give one")
    args.out = args.out or check("--out", output_dir, DEFAULT_OUT)
    try:
        if args.demo:
            if args.demo != "all":
                demos.get(args.demo)  # an unknown name fails before any demo runs
            return _run_demos(args)
        if args.network:
            return _run_network(args)
        return _run_function(args)
    except ValueError as error:
        return _error(str(error))
