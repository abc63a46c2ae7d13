"""Time ``step()`` of every optimlab optimizer against its torch.optim twin.

    python bench/optim_step.py [--case big|small|both] [--steps N] [--quick]
                               [--threads 1,2] [--only Adam,NAdam] [--device cpu|cuda|all]

For each optimizer, in one process, the implementations are stepped round-robin (in a
newly shuffled order every round, so drift in machine load and what the previous step left
in the caches hit them alike): torch's default
(on the CPU its single-tensor loop, ``foreach=False``), ``foreach=True`` and, where torch
has one on the CPU, ``fused=True``; optimlab with ``foreach=True`` and with its default
(``fused=None``: the single-pass kernel on these float32 CPU tensors; the path it took is
checked). Every block also steps torch's fused Adam and a plain copy, so each optimizer is
compared with the fused-Adam bandwidth measured under the same conditions. Reported: the
median of ``--steps`` timed steps, at each thread count of ``--threads`` (default 1 and 2).
The steps run in rounds of 10, each on tensors allocated afresh (in an order rotated every
round) and after its own warm-up, so the medians mix several memory placements: where a
tensor lands moved one implementation's small-case step by up to ±12% against an identical
one's (see ``run_placements``).

Effective GB/s counts the minimal bytes one update must move per parameter (float32):

    SGD (no momentum)          read θ, g; write θ                     12 B
    Momentum, NAG              read θ, g, b; write θ, b               20 B
    Adagrad                    read θ, g, s; write θ, s               20 B
    RMSprop                    read θ, g, v; write θ, v               20 B
    RMSprop centred+momentum   read θ, g, v, ḡ, b; write θ, v, ḡ, b   36 B
    Adadelta                   read θ, g, v, u; write θ, v, u         28 B
    Adam, AdamW, Adamax, NAdam read θ, g, m, v; write θ, m, v         28 B

The copy figure is ``dst.copy_(src)`` over a buffer as large as the parameters, counted as
read + write (8 B per float). Targets: optimlab's default at most 1.0x torch's fastest
implementation of the same optimizer (issue #2's target for ``fused=True``, now the default,
issue #16) and at >= 80 % of the GB/s of torch's fused Adam; and at most 0.5x torch's
default for Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax and NAdam (issue #16).

A second table lists the optimizer state each implementation keeps, in bytes per
parameter, measured from the state after one step.

``--device cuda`` times the same blocks on the GPU (``all``, the default, does the CPU and then,
where torch sees one, the GPU): each timed step is bracketed by ``torch.cuda.synchronize()``,
torch's default there is its foreach path, its fused kernels are those torch has for CUDA
(probed, not assumed), and the thread count plays no part. Only the first target applies there
(at most 1.0x torch's fastest, within the twin's noise: optimlab's default is often torch's own
path there); the bandwidth and half-of-default figures are printed, not judged: they are the
CPU's targets (issue #16). The state table is measured on the CPU in every case.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import optimlab.optim as oo  # noqa: E402
from optimlab.optim import _fused  # noqa: E402


@dataclass
class Spec:
    name: str
    ours: Callable  # (params) -> optimizer, given extra kwargs
    theirs: type
    hyper: dict
    their_hyper: dict
    bytes_per_param: int
    torch_fused: bool
    label_note: str = ""
    half_of_default: bool = True  # issue #16's target: <= 0.5x torch's default


LR = 1e-3
#: Where the timed tensors live (``--device``; see :func:`use_device`).
DEVICE = torch.device("cpu")


def use_device(name: str) -> torch.device:
    """Put the following blocks' tensors on ``name`` ("cpu" or "cuda"); ValueError without it."""
    global DEVICE
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: torch sees no CUDA device here (torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r}: the bench times 'cpu' or 'cuda'")
    DEVICE = device
    return device


def on_gpu() -> bool:
    return DEVICE.type == "cuda"


def sync() -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if on_gpu():
        torch.cuda.synchronize(DEVICE)


def add_device_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="where the tensors live: "
                    "all (the default) times the CPU, then the GPU where torch sees one")


def chosen_devices(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The devices ``--device`` asks for, in order; an argparse error for cuda without one."""
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device cuda: torch {torch.__version__} sees no CUDA device here")
    gpu = args.device == "cuda" or (args.device == "all" and torch.cuda.is_available())
    return (["cpu"] if args.device != "cuda" else []) + (["cuda"] if gpu else [])


def device_blocks(devices: list[str], threads: list[int]):
    """Yield once per setting a block is timed under: each of ``devices`` in turn (its tensors
    there) and, on the CPU, each thread count of ``threads`` (0: torch's own). Restores the
    CPU and torch's thread count after."""
    own = torch.get_num_threads()
    try:
        for device in devices:
            use_device(device)
            if device == "cuda":
                print(f"\nCUDA: {torch.cuda.get_device_name()}, torch CUDA {torch.version.cuda}")
            for n_threads in (threads if device == "cpu" else [0]):
                torch.set_num_threads(n_threads or own)
                yield device
    finally:
        torch.set_num_threads(own)
        use_device("cpu")


def randn(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=gen.device)


def generator(seed: int) -> torch.Generator:
    """A generator on :data:`DEVICE` (the GPU's tensors are drawn there, not copied over)."""
    return torch.Generator(device=DEVICE).manual_seed(seed)


SPECS = [
    Spec("SGD", oo.SGD, torch.optim.SGD, dict(lr=LR), dict(lr=LR), 12, True, half_of_default=False),
    Spec("Momentum", oo.Momentum, torch.optim.SGD, dict(lr=LR), dict(lr=LR, momentum=0.9), 20, True,
         half_of_default=False),
    Spec("NAG", oo.NAG, torch.optim.SGD, dict(lr=LR), dict(lr=LR, momentum=0.9, nesterov=True), 20, True,
         half_of_default=False),
    Spec("Adagrad", oo.Adagrad, torch.optim.Adagrad, dict(lr=LR), dict(lr=LR), 20, True),
    Spec("RMSprop", oo.RMSprop, torch.optim.RMSprop, dict(lr=LR), dict(lr=LR), 20, False),
    Spec("RMSprop c+m", oo.RMSprop, torch.optim.RMSprop, dict(lr=LR, centered=True, momentum=0.9),
         dict(lr=LR, centered=True, momentum=0.9), 36, False, "centred, momentum 0.9"),
    Spec("Adadelta", oo.Adadelta, torch.optim.Adadelta, dict(), dict(), 28, False),
    Spec("Adam", oo.Adam, torch.optim.Adam, dict(lr=LR), dict(lr=LR), 28, True),
    Spec("AdamW", oo.AdamW, torch.optim.AdamW, dict(lr=LR), dict(lr=LR), 28, True),
    Spec("Adamax", oo.Adamax, torch.optim.Adamax, dict(lr=LR), dict(lr=LR), 28, False),
    Spec("NAdam", oo.NAdam, torch.optim.NAdam, dict(lr=LR), dict(lr=LR), 28, False),
]

IMPLS = ["torch default", "torch foreach", "torch fused", "optimlab foreach", "optimlab default"]


# ------------------------------------------------------------------------------ cases
def big_shapes(scale: float = 1.0) -> list[tuple[int, ...]]:
    """~25M parameters in ~100 tensors: a small transformer's mix of matrices and vectors."""
    d, ff, vocab = int(512 * scale) or 8, int(2048 * scale) or 32, 4096
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(7):
        shapes += [(3 * d, d), (3 * d,), (d, d), (d,), (ff, d), (ff,), (d, ff), (d,),
                   (d,), (d,), (d,), (d,)]  # qkv, out, mlp, two layer norms
    shapes += [(d,), (d,), (1000, d), (1000,), (), (7, 3, 5, 5)]
    return shapes


def small_shapes(scale: float = 1.0) -> list[tuple[int, ...]]:
    """~1M parameters in ~200 tensors: many small layers (matrices with their biases)."""
    gen = torch.Generator().manual_seed(0)
    shapes: list[tuple[int, ...]] = []
    for _ in range(100):
        rows = int(torch.randint(48, 144, (1,), generator=gen)) 
        cols = max(1, int(10_000 * scale) // rows)
        shapes += [(rows, cols), (rows,)]
    return shapes


CASES = {"big": big_shapes, "small": small_shapes}


def numel(shapes) -> int:
    return sum(torch.Size(s).numel() for s in shapes)


# ------------------------------------------------------------------------------ timing
@dataclass
class Runner:
    label: str
    fn: Callable[[], None]
    times: list[float] = field(default_factory=list)

    def median_ms(self) -> float:
        return statistics.median(self.times) * 1e3 if self.times else float("nan")


def make_params(shapes, grads, seed):
    gen = generator(seed)
    params = [randn(s, gen).requires_grad_() for s in shapes]
    for p, g in zip(params, grads):
        p.grad = g
    return params


def optimizer_factories(spec: Spec, shapes, grads) -> list[tuple[str, Callable[[], torch.optim.Optimizer]]]:
    """(label, a function that allocates the tensors and builds the optimizer) per implementation."""
    kinds = [("torch default", lambda ps: spec.theirs(ps, **spec.their_hyper)),  # CPU: its loop; CUDA: foreach
             ("torch foreach", lambda ps: spec.theirs(ps, **spec.their_hyper, foreach=True))]
    if torch_has_fused(spec):
        kinds.append(("torch fused", lambda ps: spec.theirs(ps, **spec.their_hyper, fused=True)))
    kinds += [("optimlab foreach", lambda ps: spec.ours(ps, **spec.hyper, foreach=True)),
              ("optimlab default", lambda ps: spec.ours(ps, **spec.hyper)),
              ("optimlab twin", lambda ps: spec.ours(ps, **spec.hyper))]  # the noise: see bench_case
    return [(label, (lambda f, i: lambda: f(make_params(shapes, grads, seed=i)))(factory, i))
            for i, (label, factory) in enumerate(kinds)]


def torch_has_fused(spec: Spec) -> bool:
    """Whether torch steps ``spec``'s optimizer with ``fused=True`` on :data:`DEVICE`: on the CPU
    as the table says; elsewhere asked of torch on one small tensor (its CUDA kernels vary by
    version)."""
    if not on_gpu() or not spec.torch_fused:
        return spec.torch_fused
    p = torch.zeros(3, device=DEVICE, requires_grad=True)
    p.grad = torch.ones_like(p)
    try:
        spec.theirs([p], **spec.their_hyper, fused=True).step()
    except (RuntimeError, ValueError, NotImplementedError):
        return False
    return True


def timed(fn) -> float:
    sync()  # (the GPU: nothing queued before is counted)
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def run_block(runners: list[Runner], warmup: int, steps: int, seed: int = 0) -> None:
    """Step every runner ``warmup`` times, then ``steps`` timed times, round-robin in a newly
    shuffled order each round (seeded): what one runner leaves in the caches (the shared
    gradients, its tensors' metadata) helps or hurts the next, and a fixed cyclic order gave
    each runner the same predecessor every round, which moved identical runners' medians by
    up to 15% against each other."""
    for _ in range(warmup):
        for r in runners:
            r.fn()
    rng = random.Random(seed)
    for _ in range(steps):
        order = list(runners)
        rng.shuffle(order)
        for r in order:
            r.times.append(timed(r.fn))


#: Timed steps between fresh allocations of a block's tensors. Where a tensor lands in memory
#: (a parameter's offset from its gradient: 4K aliasing, cache-set conflicts) moved the small
#: case's step of one optimizer by up to ±12% against an identical optimizer's: kept for a
#: whole block, a placement biased the ratios. So each block is run in rounds; before each,
#: every implementation's tensors are allocated afresh, in an order rotated by one each round,
#: and the medians are over the steps of all rounds, i.e. over several placements.
STEPS_PER_PLACEMENT = 10


def placements(steps: int, warmup: int) -> str:
    """How a block is timed, for its header."""
    if steps <= STEPS_PER_PLACEMENT:
        return (f"median of {steps} steps on one allocation after {warmup} warm-up (a smoke run: one placement, "
                "too few steps to read a ratio from)")
    return (f"median of {steps} steps, in rounds of {STEPS_PER_PLACEMENT} on fresh allocations, each after "
            f"{warmup} warm-up")


def run_placements(factories: list[tuple[str, Callable[[], Callable[[], None]]]], warmup: int, steps: int,
                   per_placement: int = STEPS_PER_PLACEMENT) -> tuple[dict[str, Runner], dict[str, object]]:
    """Time each ``(label, build)`` of ``factories`` round-robin (see :func:`run_block`) for
    ``steps`` steps, in rounds of ``per_placement``: before each round, every ``build()``
    (which allocates its tensors and returns what to time, or an optimizer, whose ``step`` is
    timed) runs again, in an order rotated by one. Returns the runners with the times of all
    rounds, and the last object each ``build`` returned (e.g. to ask an optimizer its path)."""
    runners = {label: Runner(label, lambda: None) for label, _ in factories}
    built: dict[str, object] = {}
    rounds = [per_placement] * (steps // per_placement) + ([steps % per_placement] if steps % per_placement else [])
    for r, n in enumerate(rounds):
        built.clear()  # (the last round's tensors are freed first: the new ones land elsewhere)
        order = factories[r % len(factories):] + factories[:r % len(factories)]
        fresh = {}
        for label, build in order:
            obj = build()
            built[label] = obj
            fresh[label] = Runner(label, obj.step if isinstance(obj, torch.optim.Optimizer) else obj)
        block = [fresh[label] for label, _ in factories]
        run_block(block, warmup, n, seed=r)
        for runner in block:
            runners[runner.label].times += runner.times
        del fresh, block, obj
    return runners, built


def gbps(bytes_per_param: int, n: int, ms: float) -> float:
    return bytes_per_param * n / (ms * 1e-3) / 1e9


def bench_case(case: str, shapes, steps: int, warmup: int, specs) -> None:
    n = numel(shapes)
    gpu = on_gpu()
    where = (f"on {torch.cuda.get_device_name(DEVICE)}" if gpu else
             f"{torch.get_num_threads()} thread{'s' * (torch.get_num_threads() != 1)}")
    print(f"\n=== case {case}: {n / 1e6:.2f}M float32 parameters in {len(shapes)} tensors; "
          f"{placements(steps, warmup)}; {where} ===")
    gen = generator(123)
    grads = [randn(s, gen) for s in shapes]  # shared, read-only
    head = (f"{'optimizer':<12} {'B/p':>3} " + " ".join(f"{k:>10}" for k in
            ["torch def", "foreach", "fused", "ours fe", "ours def"])
            + f" {'path':>6} {'def/best':>8} {'def/tdef':>8} {'twin':>5} {'GB/s':>6} {'Adam GB/s':>9} {'% Adam':>6}"
              f" {'copy':>6}  targets")
    print(f"ms/step: torch default ({'its foreach path' if gpu else 'its CPU loop'}) | torch foreach | torch fused | optimlab foreach=True |"
          " optimlab default; the path optimlab's default took; its ratios to torch's fastest and to torch's"
          " default; twin: a second, identical optimlab default on its own tensors, over the first (1.00 but"
          " for the noise: read the ratios to that precision); GB/s of optimlab's default; torch fused Adam's"
          " and copy's GB/s in the same block")
    print(head)
    print("-" * len(head), flush=True)
    ref_adam_all: list[float] = []
    copy_all: list[float] = []
    verdicts = []
    for spec in specs:
        factories = optimizer_factories(spec, shapes, grads) + [
            ("ref", lambda: torch.optim.Adam(make_params(shapes, grads, seed=99), lr=LR, fused=True)),
            ("copy", lambda: (lambda src, dst: lambda: dst.copy_(src))(torch.randn(n, device=DEVICE),
                                                                        torch.empty(n, device=DEVICE)))]
        timed_runners, built = run_placements(factories, warmup, steps)
        adam_ref, copy = timed_runners.pop("ref"), timed_runners.pop("copy")
        runners = timed_runners
        ms = {label: r.median_ms() for label, r in runners.items()}
        best = min(v for k, v in ms.items() if k.startswith("torch"))
        ref_gbps = gbps(28, n, adam_ref.median_ms())
        copy_gbps = 8 * n / (copy.median_ms() * 1e-3) / 1e9
        ref_adam_all += adam_ref.times
        copy_all += copy.times
        path = built["optimlab default"].path_for(0)
        del built
        ours = ms["optimlab default"]
        eff = gbps(spec.bytes_per_param, n, ours)
        ratio, frac, vs_default = ours / best, eff / ref_gbps, ours / ms["torch default"]
        half = vs_default <= 0.5 or not spec.half_of_default
        twin = ms.pop("optimlab twin") / ours
        cells = " ".join(f"{ms[k]:>10.2f}" if k in ms else f"{'-':>10}" for k in IMPLS)
        ok = "/".join(["ok" if ratio <= 1.0 else "SLOWER", "ok" if frac >= 0.8 else "LOW-BW",
                       ("ok" if half else "NOT-HALF") if spec.half_of_default else "-"])
        fast = ratio <= 1.0
        if gpu:  # (the CPU's targets are not judged here: see the module's docstring)
            # both sides are often the same torch path there: a ratio above 1.0 by no more than
            # the twin's distance from 1.00 (at least 2%) is the noise, not a verdict
            fast = ratio <= 1.0 + max(0.02, abs(twin - 1.0))
            ok = ("ok" if ratio <= 1.0 else "ok (noise)") if fast else "SLOWER"
        if steps <= STEPS_PER_PLACEMENT:
            ok = "(smoke run)"  # (no verdict from one placement's few steps)
        verdicts.append((spec.name, fast, frac >= 0.8, half))
        print(f"{spec.name:<12} {spec.bytes_per_param:>3} {cells} {path or '-':>6} {ratio:>8.2f} "
              f"{vs_default:>8.2f} {twin:>5.2f} {eff:>6.1f} {ref_gbps:>9.1f} {100 * frac:>5.0f}% {copy_gbps:>6.1f}  {ok}",
              flush=True)
    adam_ms = statistics.median(ref_adam_all) * 1e3
    copy_ms = statistics.median(copy_all) * 1e3
    print(f"medians over all blocks: copy (read+write, 8 B/param) {copy_ms:.2f} ms = "
          f"{8 * n / copy_ms / 1e6:.1f} GB/s; torch fused Adam (28 B/param) {adam_ms:.2f} ms = "
          f"{gbps(28, n, adam_ms):.1f} GB/s")
    slow = [v[0] for v in verdicts if not v[1]]
    low = [v[0] for v in verdicts if not v[2]]
    not_half = [v[0] for v in verdicts if not v[3]]
    if steps <= STEPS_PER_PLACEMENT:
        print("targets: not judged on a smoke run (too few steps on one placement)", flush=True)
        return
    if gpu:
        print(f"target: default <= 1.0x torch's fastest: {'all met' if not slow else 'missed by ' + ', '.join(slow)} "
              "(the bandwidth and half-of-default targets are the CPU's)", flush=True)
        return
    print(f"targets: default <= 1.0x torch's fastest: {'all met' if not slow else 'missed by ' + ', '.join(slow)}; "
          f">= 80% of fused Adam's GB/s: {'all met' if not low else 'missed by ' + ', '.join(low)}; "
          f"<= 0.5x torch's default (adaptive rules): "
          f"{'all met' if not not_half else 'missed by ' + ', '.join(not_half)}", flush=True)


# ------------------------------------------------------------------------ state bytes
def state_bytes(opt, params) -> float:
    seen, total = set(), 0
    for p in params:
        for v in opt.state[p].values():
            if isinstance(v, torch.Tensor) and v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                total += v.numel() * v.element_size()
    return total / sum(p.numel() for p in params)


def state_table(specs) -> None:
    shapes = small_shapes()
    gen = generator(5)
    grads = [randn(s, gen) for s in shapes]
    print(f"\n=== optimizer state after one step, bytes per parameter (float32, "
          f"{numel(shapes) / 1e6:.2f}M params in {len(shapes)} tensors; 0-dim step counters included) ===")
    print(f"{'optimizer':<12} {'optimlab':>9} {'optimlab foreach':>17} {'torch foreach':>14}  keys (optimlab)")
    for spec in specs:
        row = []
        keys = ""
        for factory in (lambda ps: spec.ours(ps, **spec.hyper),
                        lambda ps: spec.ours(ps, **spec.hyper, foreach=True),
                        lambda ps: spec.theirs(ps, **spec.their_hyper, foreach=True)):
            params = make_params(shapes, grads, seed=0)
            opt = factory(params)
            opt.step()
            row.append(state_bytes(opt, params))
            if not keys:
                keys = ", ".join(sorted(opt.state[params[0]]))
        print(f"{spec.name:<12} {row[0]:>9.3f} {row[1]:>17.3f} {row[2]:>14.3f}  {keys}")


# ------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=["big", "small", "both"], default="both")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per implementation "
                    "(default 40; the median is reported)")
    ap.add_argument("--quick", action="store_true", help="smoke run: both cases with layers a tenth as wide (the big case's "
                    "0.5M parameters, the small case's 0.1M), 3 steps: one placement, too few to read a ratio from")
    ap.add_argument("--only", default=None, help="comma-separated optimizer names")
    ap.add_argument("--threads", default=None, help="comma-separated torch.set_num_threads values, each "
                    "timed in turn (default 1,2; with --quick 1; 0: torch's own setting; the CPU's blocks only)")
    add_device_argument(ap)
    args = ap.parse_args(argv)
    devices = chosen_devices(ap, args)
    wanted = {n.strip().lower() for n in args.only.split(",")} if args.only else None
    specs = SPECS if wanted is None else [s for s in SPECS if s.name.lower() in wanted]
    if not specs:
        ap.error(f"--only {args.only!r} names no optimizer here; known: {', '.join(s.name for s in SPECS)}")
    threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",") if t.strip()] or [0]

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {' '.join(filter(None, (platform.machine(), platform.processor())))}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
          + (f", load average {load[0]:.2f}" if load else ""))
    start = time.perf_counter()
    ok = _fused.available()
    print(f"optimlab fused kernels: {'loaded' if ok else 'UNAVAILABLE (fused=True falls back to foreach)'} "
          f"in {time.perf_counter() - start:.2f} s (compiled on first use, then cached)")
    cases = ["big", "small"] if args.case == "both" else [args.case]
    scale = 0.1 if args.quick else 1.0
    steps = args.steps or (3 if args.quick else 40)
    warmup = 1 if args.quick else 3
    for _ in device_blocks(devices, threads):
        for case in cases:
            bench_case(case, CASES[case](scale), steps, warmup, specs)
    state_table(specs)
    if load:
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (other processes skew timings; rerun when quiet)")


if __name__ == "__main__":
    main()
