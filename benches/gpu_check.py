"""GPU check: spectra and sparsity passes on 7B-shaped matrices (meant for an H200; runs on CPU too).

Run on a GPU machine: ``python -m benches.gpu_check``; smoke test on CPU:
``OMP_NUM_THREADS=1 python -m benches.gpu_check --small`` (shapes divided by 8).

Part 1, spectra, for 4096×4096, 4096×11008, 11008×4096 and 1024×4096 bf16 updates
(30 % density, N(0, 1e-3)): the fast path (``singular_values``, method "auto") against per-matrix
float32 ``svdvals`` (the paper's cost), with errors against float64 ``svdvals`` and the rank
against ``torch.linalg.matrix_rank(delta.float())``.

Part 2, sparsity, for a bf16 pair of 4096×11008 tensors: the bitwise test
``(a.view(int16) != b.view(int16)).sum()``, a tolerance sweep (|Δ| once, then one count per
tolerance), and ``subnetviz.analysis.sparsity.tensor_update_stats`` when it exists (else
``compare_pair``, else skipped with a note).

Part 3, the fused pass (issue 15), on 7B-shaped bf16 pairs (4096×11008, 11008×4096, 4096×4096,
32000×4096; 5 %, 30 % and 90 % changed): ``compare_pair(packed=True)`` (the update pass's call) on the
device (the one-kernel Triton pass, the ``torch.compile``d torch pass and the eager one) in GB/s of both
tensors read, against the device's copy bandwidth (``y.copy_(x)`` of one tensor: bytes read + written
per second; goal ≥ 50 %), whole (results on the host) and its device part alone, with every statistic
and the packed mask checked equal to the CPU pass on the same pair; then the host side: a pinned
tensor's host→device copy, ``pin_memory()`` + copy, and ``update_pass._to_device`` (staged through
reused pinned buffers), in GB/s.

Part 4 (``--sharded``, issue 14): masked vs unmasked GRPO on a ~0.5B Llama-shaped model (hidden
1024, 30 layers, random weights, char tokenizer) with ``strategy: fsdp2`` over every visible GPU
(``benches.bench_sharded``'s runs: ``python -m subnetviz train --config``), step time masked vs
unmasked, FSDP2 evidence and the bitwise check outside the mask; ``--small``: a tiny model on 2 CPU
processes. ``--sharded-strategy zero2|zero3``: the same with DeepSpeed ZeRO (requirements-deepspeed.txt;
on CPU too) and the engine's evidence.

Every timing synchronises the device before and after, runs once to warm up (CUDA/cuSOLVER
initialisation), and reports the best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from subnetviz.analysis.spectra import singular_values  # noqa: E402

SPECTRA_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (1024, 4096)]
PAIR_SHAPE = (4096, 11008)
TOLERANCES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int, warmup: bool = True) -> tuple[float, object]:
    """Best wall time of ``repeat`` runs (after one warm-up run), device synchronised around each."""
    if warmup:
        sync(device)
        fn()
        sync(device)
    best, out = float("inf"), None
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def sparse_update(shape, density: float, std: float, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=g) * std
    x[torch.rand(shape, generator=g) >= density] = 0
    return x.bfloat16().to(device)


def spectra_part(shapes, device: str, repeat: int, density: float, std: float) -> None:
    header = (
        f"{'shape':>12} {'svd32 s':>9} {'fast s':>9} {'ratio':>7} {'svd64 s':>9} {'rel_all':>8} {'rel_top':>8} "
        f"{'norm':>8} {'rank':>6} {'torch':>6} {'method':>8}"
    )
    print(f"\n== spectra on {device}: bf16 updates, density {density}, N(0, {std:g}), best of {repeat}")
    print(header)
    print("-" * len(header))
    tot32 = totfast = 0.0
    for i, shape in enumerate(shapes):
        delta = sparse_update(shape, density, std, seed=i, device=device)
        t32, _ = timed(lambda d=delta: torch.linalg.svdvals(d.float()), device, repeat)
        tfast, sv = timed(lambda d=delta: singular_values(d, method="auto", device=device), device, repeat)
        # the float64 reference runs once, cold: cuSOLVER is already initialised by the runs above
        t64, ref = timed(lambda d=delta: torch.linalg.svdvals(d.double()), device, 1, warmup=False)
        ref = ref.cpu().numpy()
        err = np.abs(sv.values - ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(ref > 0, err / ref, 0.0)
        top = ref >= 1e-3 * ref[0]
        torch_rank = int(torch.linalg.matrix_rank(delta.float()))
        tot32, totfast = tot32 + t32, totfast + tfast
        flag = "" if sv.rank == torch_rank else "  <- differs"
        print(
            f"{f'{shape[0]}x{shape[1]}':>12} {t32:9.3f} {tfast:9.3f} {t32 / tfast:7.2f} {t64:9.3f} {rel.max():8.1e} "
            f"{rel[top].max():8.1e} {err.max() / ref[0]:8.1e} {sv.rank:6d} {torch_rank:6d} {sv.method:>8}{flag}"
        )
        del delta
    print("-" * len(header))
    print(f"{'all':>12} {tot32:9.3f} {totfast:9.3f} {tot32 / totfast:7.2f}")


def _update_stats_fn():
    """The lead's per-tensor sparsity pass, if present: (label, callable(a, b)) or (note, None)."""
    try:
        from subnetviz.analysis import sparsity
    except ImportError as exc:
        return f"skipped: subnetviz.analysis.sparsity not importable ({exc})", None
    for name in ("tensor_update_stats", "compare_pair"):
        fn = getattr(sparsity, name, None)
        if fn is not None:
            return name, fn
    return "skipped: no tensor_update_stats / compare_pair in subnetviz.analysis.sparsity", None


def sparsity_part(shape, device: str, repeat: int) -> None:
    g = torch.Generator(device="cpu").manual_seed(123)
    a = (torch.randn(shape, generator=g) * 0.02).bfloat16()
    # an Adam-sized step (1e-5) on 30 % of N(0, 0.02) weights: most vanish in bf16 rounding, as in RL runs
    step = torch.randn(shape, generator=g) * 1e-5 * (torch.rand(shape, generator=g) < 0.3)
    b = (a.float() + step).bfloat16()
    a, b = a.to(device), b.to(device)
    numel = a.numel()
    gbytes = 2 * a.element_size() * numel / 1e9  # both tensors read once

    def bitwise():
        return int((a.view(torch.int16) != b.view(torch.int16)).sum())

    def sweep():
        delta = (b.float() - a.float()).abs()
        return [int((delta > t).sum()) for t in TOLERANCES]

    rows = []
    t, changed = timed(bitwise, device, repeat)
    rows.append(("bitwise != on int16 view", t, f"density {changed / numel:.4f}"))
    t, counts = timed(sweep, device, repeat)
    rows.append((f"|Δ| once + {len(TOLERANCES)} tolerance counts", t, " ".join(f"{c / numel:.3f}" for c in counts)))
    label, fn = _update_stats_fn()
    if fn is None:
        rows.append((label, float("nan"), ""))
    else:
        try:
            t, _ = timed(lambda: fn(a, b), device, repeat)
            rows.append((f"sparsity.{label}(a, b)", t, "all statistics of the pass"))
        except TypeError as exc:  # its signature changed since this script was written
            rows.append((f"sparsity.{label}: skipped, call failed ({exc})", float("nan"), ""))

    print(f"\n== sparsity pass on {device}: bf16 pair {shape[0]}x{shape[1]} ({gbytes:.3f} GB read), best of {repeat}")
    header = f"{'pass':<44} {'time s':>9} {'GB/s':>8}  result"
    print(header)
    print("-" * (len(header) + 30))
    for name, t, note in rows:
        rate = gbytes / t if t == t and t > 0 else float("nan")
        print(f"{name:<44} {t:9.4f} {rate:8.1f}  {note}")


FUSED_SHAPES = [(4096, 11008), (11008, 4096), (4096, 4096), (32000, 4096)]


def planted_pair(shape, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A bf16 pair (CPU) with ``share`` of the entries moved by 1-3 ULPs."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = (torch.randn(shape, generator=g) * 0.02).bfloat16()
    move = torch.rand(shape, generator=g) < share
    steps = torch.randint(1, 4, shape, generator=g, dtype=torch.int16)
    return a, torch.where(move, a.view(torch.int16) + steps, a.view(torch.int16)).view(torch.bfloat16)


def _same_stats(x, y) -> bool:
    """``x`` (a packed pass) has ``y``'s (the CPU pass with a bool mask) numbers and mask."""
    return (x.changed, x.changed_tol, x.changed_rel, x.ulp_hist, x.max_abs_delta) == (
        y.changed,
        y.changed_tol,
        y.changed_rel,
        y.ulp_hist,
        y.max_abs_delta,
    ) and bool(
        np.array_equal(x.row_counts, y.row_counts)
        and np.array_equal(x.col_counts, y.col_counts)
        and np.array_equal(x.mask_bits, np.packbits(y.mask.numpy().reshape(-1)))
    )


def _device_part(sparsity, a: torch.Tensor, b: torch.Tensor):
    """What ``compare_pair(a, b, packed=True)`` computes on the device, left there (no transfer): the
    fused pass into its accumulators and the mask packed."""
    from subnetviz.analysis.bits import int_view

    options = sparsity.SparsityOptions()
    acc = sparsity._Pass("w", len(options.tolerances))
    a2, b2 = a.reshape(a.shape[0], -1), b.reshape(a.shape[0], -1)
    sparsity._torch_pass(int_view(a2), int_view(b2), a.dtype, options, acc)
    if acc.bits is not None:  # the Triton pass packs the mask itself
        return acc.bits
    return sparsity._chunk_kernel(a.device, sparsity._pack_bits)(acc.mask)


def fused_part(shapes, device: str, repeat: int) -> None:
    """compare_pair on the device (compiled and eager kernels) in GB/s vs the copy bandwidth: the whole
    call as the update pass makes it (``packed=True``: statistics, row/column counts and the packed mask
    on the host) and its device part alone (everything computed, nothing transferred)."""
    from subnetviz.analysis import sparsity

    print(f"\n== fused compare_pair on {device}: bf16 pairs, GB/s of both tensors read, best of {repeat}")
    print(
        "   pass: compare_pair(a, b, packed=True), results on the host (the Triton kernel where Triton is present);"
        "\n   device: the same, left on the device; torch: the torch.compile'd torch pass; eager: it uncompiled"
    )
    header = (
        f"{'shape':>12} {'changed':>8} {'copy GB/s':>10} {'pass s':>9} {'GB/s':>8} {'of copy':>8} "
        f"{'device s':>9} {'GB/s':>8} {'of copy':>8} {'torch s':>9} {'eager s':>9} {'= CPU':>6}"
    )
    print(header)
    print("-" * len(header))
    tot_bytes = tot_fused = tot_dev = tot_copy_bytes = tot_copy = 0.0
    for i, shape in enumerate(shapes):
        for share in (0.05, 0.3, 0.9):
            a_cpu, b_cpu = planted_pair(shape, share, seed=i)
            ref = sparsity.compare_pair(a_cpu, b_cpu)
            a, b = a_cpu.to(device), b_cpu.to(device)
            nbytes = 2 * a.numel() * a.element_size()
            out = torch.empty_like(a)
            t_copy, _ = timed(lambda o=out, x=a: o.copy_(x), device, repeat)
            copy_rate = 2 * a.numel() * a.element_size() / t_copy / 1e9  # read + write
            t_fused, st = timed(lambda x=a, y=b: sparsity.compare_pair(x, y, packed=True), device, repeat)
            same = _same_stats(st, ref)
            t_dev, _ = timed(lambda x=a, y=b: _device_part(sparsity, x, y), device, repeat)
            sparsity._TRITON_ON_CUDA = False  # the torch pass: compiled, then eager
            try:
                t_comp, st_c = timed(lambda x=a, y=b: sparsity.compare_pair(x, y, packed=True), device, repeat)
                same &= _same_stats(st_c, ref)
                sparsity._COMPILE_ON_CUDA = False
                t_eager, st_e = timed(lambda x=a, y=b: sparsity.compare_pair(x, y, packed=True), device, repeat)
                same &= _same_stats(st_e, ref)
            finally:
                sparsity._COMPILE_ON_CUDA = sparsity._TRITON_ON_CUDA = True
            rate, dev_rate = nbytes / t_fused / 1e9, nbytes / t_dev / 1e9
            tot_bytes, tot_fused, tot_dev = tot_bytes + nbytes, tot_fused + t_fused, tot_dev + t_dev
            tot_copy_bytes, tot_copy = tot_copy_bytes + 2 * a.numel() * a.element_size(), tot_copy + t_copy
            print(
                f"{f'{shape[0]}x{shape[1]}':>12} {share:8.0%} {copy_rate:10.1f} {t_fused:9.4f} {rate:8.1f} "
                f"{rate / copy_rate:8.0%} {t_dev:9.4f} {dev_rate:8.1f} {dev_rate / copy_rate:8.0%} {t_comp:9.4f} "
                f"{t_eager:9.4f} "
                f"{'yes' if same else 'NO':>6}"
            )
            del a, b, out
    print("-" * len(header))
    rate, copy_rate, dev_rate = tot_bytes / tot_fused / 1e9, tot_copy_bytes / tot_copy / 1e9, tot_bytes / tot_dev / 1e9
    print(
        f"{'all':>12} {'':>8} {copy_rate:10.1f} {tot_fused:9.4f} {rate:8.1f} {rate / copy_rate:8.0%} "
        f"{tot_dev:9.4f} {dev_rate:8.1f} {dev_rate / copy_rate:8.0%}   goal >= 50 %"
    )
    if device.startswith("cuda"):
        triton_sweep(device, repeat)
        _host_to_device(device, repeat)


def triton_sweep(device: str, repeat: int) -> None:
    """The Triton kernel alone (``bits_triton.pair_pass``, results left on the device) at several tile
    shapes and warp counts, on a 7B MLP matrix and an embedding (30 % changed), in GB/s of both tensors
    read against the copy bandwidth; every configuration's numbers checked equal to the default's."""
    from subnetviz.analysis import bits_triton
    from subnetviz.analysis.bits import int_view

    if not bits_triton.AVAILABLE:
        print("\n(no Triton: tile sweep skipped)")
        return
    names = ("ITERATIONS", "LOOP_ROWS", "LOOP_COLS", "LOOP_WARPS", "BLOCK_ROWS", "BLOCK_COLS", "NUM_WARPS")
    default = {n: getattr(bits_triton, n) for n in names}
    # (row tiles per program, rows, columns, warps); 0 tiles: the one-tile kernel
    configs = [(0, 16, 256, 4), (0, 64, 256, 8), (16, 4, 256, 4), (16, 8, 256, 8), (32, 4, 256, 4)]
    configs += [(16, 4, 512, 4), (16, 2, 1024, 8), (64, 4, 256, 4), (16, 8, 512, 8), (8, 16, 256, 8)]
    print(f"\n== Triton kernel alone (device results), bf16, 30 % changed; default {default}")
    for shape in (FUSED_SHAPES[0], FUSED_SHAPES[3]):
        a, b = (t.to(device) for t in planted_pair(shape, 0.3, seed=5))
        xv, yv = int_view(a), int_view(b)
        nbytes = 2 * a.numel() * a.element_size()
        out = torch.empty_like(a)
        t_copy, _ = timed(lambda o=out, x=a: o.copy_(x), device, repeat)
        copy_rate = nbytes / t_copy / 1e9
        args = (xv, yv, torch.bfloat16, (1e-8, 1e-7, 1e-6, 1e-5, 1e-4), 1e-3, True, None, True, True)
        want = None
        cells = []
        for it, br, bc, nw in configs:
            bits_triton.ITERATIONS = it
            if it:
                bits_triton.LOOP_ROWS, bits_triton.LOOP_COLS, bits_triton.LOOP_WARPS = br, bc, nw
            else:
                bits_triton.BLOCK_ROWS, bits_triton.BLOCK_COLS, bits_triton.NUM_WARPS = br, bc, nw
            name = f"{it}x{br}x{bc}/{nw}w"
            try:
                t, got = timed(lambda a=args: bits_triton.pair_pass(*a), device, repeat)
            except Exception as exc:  # noqa: BLE001 (a configuration that does not build: say so, go on)
                cells.append(f"{name}: failed ({type(exc).__name__}: {str(exc)[:80]})")
                continue
            finally:
                for n, v in default.items():
                    setattr(bits_triton, n, v)
            got = [g.cpu() for g in got]
            want = want or got
            same = all(torch.equal(x, y) for x, y in zip(got, want, strict=True))
            rate = nbytes / t / 1e9
            cells.append(f"{name} {1e3 * t:.3f} ms {rate:.0f} GB/s {rate / copy_rate:.0%}{'' if same else ' DIFFERS'}")
        print(f"  {shape[0]}x{shape[1]} (copy {copy_rate:.0f} GB/s):")
        for cell in cells:
            print(f"    {cell}")
        del a, b, xv, yv, out


def _host_to_device(device: str, repeat: int) -> None:
    """The read path's host->GPU copy: a pinned tensor's transfer, ``pin_memory()`` + transfer (a fresh
    pinned buffer per tensor) and ``update_pass._to_device`` (reused pinned staging buffers), checked
    bit-identical, for a 7B MLP matrix and an embedding."""
    from subnetviz.analysis.update_pass import _to_device

    for shape in (FUSED_SHAPES[0], FUSED_SHAPES[3]):
        x = torch.randn(shape).bfloat16()
        gb = x.numel() * x.element_size() / 1e9
        xp = x.pin_memory()
        t_h2d, _ = timed(lambda p=xp: p.to(device, non_blocking=True), device, repeat)
        t_pin, _ = timed(lambda h=x: h.pin_memory().to(device, non_blocking=True), device, repeat)
        t_stage, y = timed(lambda h=x: _to_device(h, device), device, repeat)
        same = torch.equal(y.cpu().view(torch.int16), x.view(torch.int16))
        print(
            f"host->device {shape} bf16: pinned {gb / t_h2d:.1f} GB/s; pin_memory() + copy {gb / t_pin:.1f} GB/s; "
            f"_to_device (staged, the read path) {gb / t_stage:.1f} GB/s, identical: {'yes' if same else 'NO'}"
        )


def sharded_part(small: bool, steps: int, strategy: str = "fsdp2") -> None:
    """Issue 14: FSDP2 (or ZeRO) masked vs unmasked GRPO step time (a 2-process CPU smoke run with ``small``)."""
    import tempfile
    from pathlib import Path

    from benches.bench_sharded import _data, _evidence, run
    from tests.models import make_tiny_llama
    from tests.training_fixtures import write_half_mask

    root = Path(tempfile.mkdtemp(prefix="gpu-check-sharded-"))
    dims = (
        dict(hidden=64, intermediate=256, layers=2, heads=4)
        if small
        else dict(hidden=1024, intermediate=4096, layers=30, heads=16)
    )
    base = make_tiny_llama(root / "base", **dims)
    mask = write_half_mask(root / "half.safetensors", base, p=0.5, seed=0)
    nproc = max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 2
    print(f"\n[sharded] {strategy} masked vs full GRPO, {nproc} process(es), {steps} steps, model {dims}")
    per_step = {}
    for variant in ("full", "masked", "full", "masked"):
        out = root / f"{variant}-{len(per_step.get(variant, []))}"
        cfg = {
            "algorithm": "grpo",
            "base": str(base),
            "data": str(_data(root, "grpo")),
            "output_dir": str(out / "model"),
            "mask": str(mask) if variant == "masked" else None,
            "steps": steps,
            "learning_rate": 1e-5,
            "batch_size": 32,
            "num_generations": 8,
            "max_completion_length": 4,
            "weight_decay": 0.01,
            "strategy": strategy,
            "num_processes": nproc,
        }
        summary = run(cfg, out)
        per_step.setdefault(variant, []).append(summary["train_seconds"] / summary["steps_done"])
        if variant == "masked":
            chk = summary["gathered_check"]
            if strategy == "fsdp2":
                ev = summary["fsdp2"]
                what = f"{ev['dtensor_parameters']}/{ev['parameters']} DTensor parameters, mesh {ev['mesh_size']}"
            else:
                ev = _evidence(summary, strategy, world=nproc)
                what = f"stage {ev['stage']}, {ev['world_size']} ranks, {ev['local_numel']:,} local on rank 0"
            print(
                f"  {strategy}: {what}, {ev['full_numel']:,} parameters; outside mask identical: "
                f"{chk['outside_mask_identical']} (changed inside {chk['changed_inside']:,})"
            )
    full, masked = min(per_step["full"]), min(per_step["masked"])
    print(f"  step time full {1000 * full:.1f} ms, masked {1000 * masked:.1f} ms, ratio {masked / full:.3f}")


def pipeline_part(device: str, layers: int) -> None:
    """The update pass end to end (``analyze_updates``: files read, compared, masks kept) on a Qwen2.5-0.5B-
    shaped bf16 pair with 30 % of entries moved, on ``device`` and on the CPU (one thread): time, and every
    per-tensor statistic and mask equal."""
    import shutil
    import tempfile
    from pathlib import Path

    from benches.bench_streaming import write_pair
    from subnetviz.analysis.updates import analyze_updates

    root = Path(tempfile.mkdtemp(prefix="gpu-check-pipeline-"))
    try:
        base, ft, planted, params = write_pair(root, layers)
        print(
            f"\n== update pass end to end: 0.5B-shaped bf16 pair ({layers} layers, {params:,} parameters, 30 % moved)"
        )
        runs = {}
        for dev in (device, device, "cpu"):  # the first on the device compiles its kernels
            t0 = time.perf_counter()
            an = analyze_updates(str(base), [str(ft)], device=dev)
            runs.setdefault(dev, []).append((time.perf_counter() - t0, an.reports[0]))
        gb = 2 * 2 * params / 1e9
        cpu_s, cpu_rep = runs["cpu"][0]
        for dev, got in runs.items():
            for k, (sec, rep) in enumerate(got):
                cols = [c for c in rep.tensors.columns if c not in ("seconds",)]
                same = rep.changed == planted and rep.tensors[cols].equals(cpu_rep.tensors[cols])
                same &= all(torch.equal(rep.masks[n], cpu_rep.masks[n]) for n in list(cpu_rep.masks)[:40])
                what = "first (compiles)" if dev != "cpu" and k == 0 else "warm" if dev != "cpu" else "1 thread"
                print(
                    f"  {dev:>5} {what:<16} {sec:7.2f} s  {gb / sec:6.2f} GB/s of both files  "
                    f"changed {rep.changed:,} (planted {planted:,})  = CPU: {'yes' if same else 'NO'}"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="shapes divided by 8 (CPU smoke test)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--density", type=float, default=0.3)
    parser.add_argument("--std", type=float, default=1e-3)
    parser.add_argument("--skip-spectra", action="store_true")
    parser.add_argument("--skip-sparsity", action="store_true")
    parser.add_argument("--skip-fused", action="store_true")
    parser.add_argument("--pipeline", action="store_true", help="also part 5: the update pass end to end")
    parser.add_argument("--pipeline-layers", type=int, default=24)
    parser.add_argument("--sharded", action="store_true", help="also part 4: FSDP2 masked GRPO (issue 14)")
    parser.add_argument("--sharded-steps", type=int, default=10)
    parser.add_argument("--sharded-strategy", default="fsdp2", choices=["fsdp2", "zero2", "zero3"])
    args = parser.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    div = 8 if args.small else 1
    shapes = [(m // div, n // div) for m, n in SPECTRA_SHAPES]
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, device {device} ({name}){', small shapes' if args.small else ''}")
    if not args.skip_spectra:
        spectra_part(shapes, device, args.repeat, args.density, args.std)
    if not args.skip_sparsity:
        sparsity_part((PAIR_SHAPE[0] // div, PAIR_SHAPE[1] // div), device, args.repeat)
    if not args.skip_fused:
        fused_part([(m // div, n // div) for m, n in FUSED_SHAPES], device, args.repeat)
    if args.pipeline:
        pipeline_part(device, args.pipeline_layers)
    if args.sharded:
        sharded_part(args.small, args.sharded_steps, args.sharded_strategy)


if __name__ == "__main__":
    main()
