"""What a decomposition will cost before it starts: how many matrices, and about how many seconds.

Spectra and subspaces decompose every matrix of a comparison, and their cost grows as m·k² + k³ per
(m, n) matrix (k = min(m, n)), not with the bytes read: a 7B pair's spectra take minutes, gpt-oss-20b's
per-expert spectra over an hour on one CPU thread. On a shared server one visitor's click would start
that. The pages ask before such work starts, and refuse it to viewers (:func:`subnetviz.ui.confirm_heavy`),
when the estimate here is over ``SUBNETVIZ_CONFIRM_ABOVE_S`` seconds.

The estimate counts the matrices the analysis will decompose, from the checkpoints' headers only (the
same selection the analysis makes: :func:`~subnetviz.analysis.update_pass.planned_spectra`,
:func:`~subnetviz.analysis.subspaces.subspace_keys`), in units of work: the Gram and its eigen-decomposition
(:func:`units`), and the work that grows with the entries (forming Δ, the random baseline's scatter, the
subspace masks). It prices a unit by timing the routine itself once per process and device on a
:data:`PROBE` matrix. It is an estimate, meant to tell a minute from an hour; ``benches/bench_cost.py``
measures it against the work it prices (0.81–1.26× over two runs on this machine's one thread). Work under
:data:`SMALL` seconds even at :data:`SLOW` seconds per unit (the demo zoo, small models) is not timed at
all: that bound is its estimate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

PROBE = (2048, 1024)  # the matrix each routine is timed on (about 0.3 s on one CPU thread)
SLOW = 1e-9  # seconds per unit no machine is slower than (this box's one thread: about 3e-11 to 6e-11)
SMALL = 5.0  # seconds: work under this at SLOW is not timed
SPECTRA_UNITS, SUBSPACE_UNITS = (0.5, 1.0), (1.0, 2.0)  # (gram, eig) weights, fitted on one CPU thread
# units per entry of the work that grows with m·n, fitted on one CPU thread: forming the float64 Δ and counting
# its nonzeros, the random baseline's scatter (randperm), and a subspace comparison's update and principal masks
SPECTRA_ENTRY, BASELINE_ENTRY, SUBSPACE_ENTRY = 150.0, 450.0, 1500.0
BUILD_UNITS = 2000.0  # a behaviour experiment's model build, per parameter, in float32 operations (fitted)
_rates: dict[tuple[str, str], float] = {}  # (routine, device) -> seconds per unit, measured once
_lock = threading.Lock()


@dataclass(frozen=True)
class Cost:
    """``matrices`` decompositions (or ``unit``), about ``seconds`` on ``device``, for ``what`` (a page's words)."""

    what: str
    matrices: int
    seconds: float
    device: str
    unit: str = "matrix decomposition"  # what ``matrices`` counts

    def text(self) -> str:
        """One line: "Spectra of Δ: 1,344 matrix decompositions, about 24 min on this server's cpu"."""
        return (
            f"{self.what}: {self.matrices:,} {self.unit}{_plural(self.unit) if self.matrices != 1 else ''}, "
            f"about {duration(self.seconds)} on this server's {self.device}"
        )


def _plural(noun: str) -> str:
    return "es" if noun.endswith("s") else "s"


def duration(seconds: float) -> str:
    """A rounded duration for people: "40 s", "3 min", "1.4 h"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def units(m: int, n: int, weights: tuple[float, float] = SUBSPACE_UNITS) -> float:
    """The work of one (m, n) decomposition by the Gram path: gram·m·k² + eig·k³, k = min(m, n). The weights
    tell the routines apart: spectra form only the Gram's lower triangle and take eigenvalues alone
    (:data:`SPECTRA_UNITS`); subspaces form the whole Gram and take eigenvectors too."""
    k, length = min(m, n), max(m, n)
    gram, eig = weights
    return gram * float(length) * k * k + eig * float(k) ** 3


def randomized_units(m: int, n: int, q: int, power_iters: int) -> float:
    """The work of the randomized path with q columns: ``torch.svd_lowrank``'s 2·(iterations + 1) float32
    products of (m, n) by (n, q), then its float64 refinement's two products an iteration (each counted
    twice: float64), priced at its most iterations (it stops sooner where the spectrum's gap past K is wide)."""
    from subnetviz.analysis.subspaces_linalg import FLOAT64_MAX_ITERS

    return (2.0 * (power_iters + 1) + 4.0 * FLOAT64_MAX_ITERS) * m * n * q


def spectrum_units(m: int, n: int, baseline: bool) -> float:
    """The work of one Δ's spectrum in the update pass: forming it, its decomposition, and with ``baseline``
    the random-sparse matrix's scatter and decomposition."""
    return (2 if baseline else 1) * units(m, n, SPECTRA_UNITS) + (
        SPECTRA_ENTRY + (BASELINE_ENTRY if baseline else 0.0)
    ) * m * n


def seconds(work: float, routine: str, device: str, probe: Callable[[], tuple[Callable[[], object], float]]) -> float:
    """About how long ``work`` units take on ``device``: the :data:`SLOW` bound where that is under
    :data:`SMALL` seconds, else priced by :func:`rate`."""
    if work * SLOW <= SMALL:
        return work * SLOW
    return work * rate(routine, device, probe)


def rate(routine: str, device: str, probe: Callable[[], tuple[Callable[[], object], float]]) -> float:
    """Seconds per unit of ``routine`` on ``device``: ``probe()`` gives a call of the routine on a
    :data:`PROBE`-sized matrix and its work in units; the best of three timings, measured once per process
    (a lock keeps concurrent sessions from timing at once)."""
    with _lock:
        if (routine, device) not in _rates:
            run, work = probe()
            best = math.inf
            for _ in range(3):
                t0 = time.perf_counter()
                run()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            _rates[routine, device] = best / work
        return _rates[routine, device]


def _probe_pair(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A bf16 :data:`PROBE` matrix and a copy with 30 % of its entries changed, on ``device``."""
    gen = torch.Generator().manual_seed(0)
    a = (0.02 * torch.randn(*PROBE, generator=gen)).to(torch.bfloat16)
    moved = torch.rand(*PROBE, generator=gen) < 0.3
    b = torch.where(moved, (a.float() * 1.01).to(torch.bfloat16), a)
    return a.to(device), b.to(device)


def spectra_cost(base, finetuned: Sequence, spectra, device: str = "auto", what: str = "Spectra of Δ") -> Cost:
    """The cost of the spectra :func:`~subnetviz.analysis.updates.analyze_updates` takes with ``spectra`` (a
    :class:`~subnetviz.analysis.update_pass.SpectraOptions`): every compared matrix of every finetuned model,
    twice with the random baseline. Reads headers only."""
    from subnetviz.analysis.spectra import update_spectrum
    from subnetviz.analysis.update_pass import planned_spectra
    from subnetviz.config import resolve_device

    dev = resolve_device(device)
    shapes = planned_spectra(base, finetuned, spectra)
    baseline = bool(spectra is not None and spectra.baseline)
    work = sum(spectrum_units(m, n, baseline) for m, n in shapes)

    def probe():
        a, b = _probe_pair(dev)
        d = b.to(torch.float64) - a.to(torch.float64)
        return lambda: update_spectrum("probe", d, baseline=True, device=dev), spectrum_units(*PROBE, True)

    count = (2 if baseline else 1) * len(shapes)
    return Cost(what, count, seconds(work, "spectra", dev, probe), dev)


def subspaces_cost(base, finetuned: Sequence, options, device: str = "auto", what: str = "Subspaces") -> Cost:
    """The cost of :func:`~subnetviz.analysis.subspaces.analyze_subspaces` with ``options``: each base matrix
    decomposed once and each finetuned model's, by the Gram path or (sides over ``options.max_dim``) the
    randomized one, and each model's update and principal-weight masks."""
    from subnetviz.analysis.subspaces import SubspaceOptions, choose_method, compare_subspaces, subspace_keys
    from subnetviz.config import resolve_device

    dev = resolve_device(device)
    work, count = 0.0, 0
    for (m, n), models in subspace_keys(base, finetuned):
        k = options.k_for((m, n))
        if choose_method((m, n), options) == "randomized":
            one = randomized_units(m, n, min(k + options.oversample, m, n), options.power_iters)
        else:
            one = units(m, n, SUBSPACE_UNITS)
        work += one + models * (one + SUBSPACE_ENTRY * m * n)
        count += 1 + models

    def probe():
        a, b = _probe_pair(dev)
        run = lambda: compare_subspaces("probe", a, b, SubspaceOptions(k=16, method="gram"))  # noqa: E731
        return run, 2 * units(*PROBE, SUBSPACE_UNITS) + SUBSPACE_ENTRY * PROBE[0] * PROBE[1]

    return Cost(what, count, seconds(work, "subspaces", dev, probe), dev)


def behavior_cost(config: dict, what: str = "Behaviour") -> Cost:
    """The cost of :func:`~subnetviz.analysis.behavior.run_config`: its forward passes
    (:func:`~subnetviz.analysis.behavior.planned_passes`) and the models it builds, priced by
    :func:`forward_cost`."""
    from subnetviz.analysis.behavior import planned_passes

    passes, builds, tokens, params = planned_passes(config)
    return forward_cost(what, passes, tokens, params, builds, config.get("device", "auto"))


def forward_cost(
    what: str, passes: int, tokens: float, params: int, builds: int, device: str = "auto", unit: str = "forward pass"
) -> Cost:
    """``passes`` forward passes of ``tokens`` tokens each through a model of ``params`` parameters (each about
    2 · parameters · tokens floating-point operations) and ``builds`` models built (each parameter read, compared,
    selected and written: about :data:`BUILD_UNITS` operations' time on one CPU thread), priced by timing a
    float32 matrix product of a transformer layer's shape on the device."""
    from subnetviz.config import resolve_device

    dev = resolve_device(device)
    flops = 2.0 * params * tokens * passes + BUILD_UNITS * params * builds

    def probe():
        gen = torch.Generator().manual_seed(0)
        x, w = (torch.randn(s, generator=gen).to(dev) for s in ((256, 2048), (2048, 2048)))
        return lambda: torch.nn.functional.linear(x, w), 2.0 * 256 * 2048 * 2048

    return Cost(what, passes, seconds(flops, "forward", dev, probe), dev, unit=unit)


def bigram_cost(model: str, corpus: str, what: str = "Bigram analysis") -> Cost:
    """The cost of the Bigram page's analysis of a mask (:func:`~subnetviz.bigram.job.analyse_mask_file` with
    the page's options), from the model's headers and config: its forward passes
    (:func:`~subnetviz.bigram.store.planned_passes`) priced by :func:`forward_cost`."""
    from subnetviz.bigram.store import planned_passes

    passes, builds, tokens, params = planned_passes(model, corpus)
    return forward_cost(what, passes, tokens, params, builds, "cpu")


def accuracy_cost(models: Sequence, eval_data: str, max_new_tokens: int = 8, what: str = "Held-out accuracy") -> Cost:
    """The cost of greedy held-out accuracy (:func:`~subnetviz.training.evaluate.evaluate_accuracy`) of each of
    ``models`` on ``eval_data``: per model, its generation steps over every problem (the prompt once, then one
    token a step), priced by :func:`forward_cost` with the largest model's parameters."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.training.evaluate import planned_tokens

    params = max(open_checkpoint(m).num_params for m in models)
    steps, tokens = planned_tokens(models[0], eval_data, max_new_tokens)
    return forward_cost(what, len(models) * steps, tokens / max(steps, 1), params, 0, "auto", unit="generation step")
