"""Benchmark: the streaming update analysis against its floor and against the naive way.

Writes a Qwen2.5-0.5B-shaped bf16 pair (two ~1 GB safetensors checkpoints, tied embeddings; the
finetuned one has ~30 % of entries moved by 1-3 bf16 ULPs at random positions), tensor by tensor
so the writer never holds a model, then measures on one thread, each phase in its own process so
the peaks are separate:

- (a) the floor: ``safe_open`` both files, read each tensor pair, count
  ``(x.view(int16) != y.view(int16)).sum()``;
- (a') the same with ``torch.count_nonzero``: torch's bool ``.sum()`` widens to int64 (~30x
  slower on one thread, plus a full-size int64 temporary), so (a') is the true read-and-compare
  floor and the goal is stated against it (``ratio`` = (b)/(a'));
- (b) the full default analysis ``analyze_updates(base, [ft], spectra=SpectraOptions(enabled=False))``
  (exact mask, tolerance sweep, η rule, ULP histogram, row/column counts);
- (c) the naive way: ``AutoModelForCausalLM.from_pretrained`` both in bf16, then per parameter
  ``(Δ == 0)`` and ``isclose(Δ, 0, atol=1e-5)`` counts, as the paper's script does.

Peak anonymous memory (``RssAnon`` in ``/proc/<pid>/status``, sampled by this parent every 2 ms;
RSS would also count the memory-mapped file pages) is checked against 4 × the largest tensor +
300 MB. Goals (issue 15): (b) ≤ 2.5 × (a') at 5 %, 30 % and 90 % changed (one pair each, ``--densities``);
(c) / (b) ≥ 4 (at 30 %); (b) within the memory limit. (a) and (c) run at 30 % only.

    .venv/bin/python -m benches.bench_streaming              # writes ~2 GB to a temp dir, deletes it
    .venv/bin/python -m benches.bench_streaming --layers 4   # a smaller, quicker pair
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 896, 4864, 14, 2, 151936
CHANGED = 0.30


QWEN_05B = {"hidden": HIDDEN, "inter": INTER, "heads": HEADS, "kv_heads": KV_HEADS, "vocab": VOCAB}


def qwen_shapes(layers: int, dims: dict | None = None) -> dict[str, tuple[int, ...]]:
    """Qwen2.5 tensor names and shapes (tied head: no lm_head), in checkpoint order; ``dims``
    (hidden, inter, heads, kv_heads, vocab) default to Qwen2.5-0.5B's."""
    d = {**QWEN_05B, **(dims or {})}
    HIDDEN, INTER, VOCAB = d["hidden"], d["inter"], d["vocab"]  # noqa: N806 (the module constants' names)
    kv = HIDDEN // d["heads"] * d["kv_heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (HIDDEN,),
                p + "mlp.down_proj.weight": (HIDDEN, INTER),
                p + "mlp.gate_proj.weight": (INTER, HIDDEN),
                p + "mlp.up_proj.weight": (INTER, HIDDEN),
                p + "post_attention_layernorm.weight": (HIDDEN,),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.k_proj.weight": (kv, HIDDEN),
                p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.q_proj.bias": (HIDDEN,),
                p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.v_proj.bias": (kv,),
                p + "self_attn.v_proj.weight": (kv, HIDDEN),
            }
        )
    shapes["model.norm.weight"] = (HIDDEN,)
    return shapes


def open_checkpoints(paths: list[Path], layers: int, dims: dict | None = None):
    """Start ``paths`` as Qwen2-shaped bf16 checkpoints written in lockstep: each folder gets the config
    and a ``model.safetensors`` whose header is already written; returns (tensor shapes, open files).
    The caller writes each tensor's bytes, in ``shapes`` order, to every file and closes them."""
    import torch
    from transformers import Qwen2Config

    shapes = qwen_shapes(layers, dims)
    d = {**QWEN_05B, **(dims or {})}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = 2 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    cfg = Qwen2Config(
        hidden_size=d["hidden"],
        intermediate_size=d["inter"],
        num_hidden_layers=layers,
        num_attention_heads=d["heads"],
        num_key_value_heads=d["kv_heads"],
        vocab_size=d["vocab"],
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        dtype="bfloat16",
    )
    handles = []
    for p in paths:
        p.mkdir(parents=True)
        cfg.save_pretrained(p)
        fh = open(p / "model.safetensors", "wb")  # noqa: SIM115 (files written in lockstep, closed by the caller)
        fh.write(len(raw).to_bytes(8, "little") + raw)
        handles.append(fh)
    return shapes, handles


def write_pair(
    folder: Path, layers: int, seed: int = 0, changed_share: float = CHANGED, dims: dict | None = None
) -> tuple[Path, Path, int, int]:
    """Stream both checkpoints to disk; returns (base, ft, number of changed entries, params)."""
    import torch

    paths = [folder / "base", folder / "ft"]
    shapes, handles = open_checkpoints(paths, layers, dims)
    gen = torch.Generator().manual_seed(seed)
    changed = params = 0
    try:
        for name, shape in shapes.items():
            if name.endswith("norm.weight"):
                a = (1.0 + 0.1 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
            else:
                a = (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
            bits = a.view(torch.int16)
            move = torch.rand(shape, generator=gen) < changed_share
            steps = torch.randint(1, 4, shape, generator=gen, dtype=torch.int16)
            # +k on the int16 view moves |w| up by k ULPs for either sign (sign-magnitude)
            b = torch.where(move, bits + steps, bits)
            changed += int(move.sum())
            params += a.numel()
            handles[0].write(bits.numpy().tobytes())
            handles[1].write(b.numpy().tobytes())
            del a, bits, move, steps, b
    finally:
        for fh in handles:
            fh.close()
    return paths[0], paths[1], changed, params


# --- the three phases, each run in a child process -----------------------------------------------------
def phase_floor(base: Path, ft: Path) -> dict:
    import torch
    from safetensors import safe_open

    count = 0
    with safe_open(str(base / "model.safetensors"), "pt") as fa, safe_open(str(ft / "model.safetensors"), "pt") as fb:
        for name in fa.keys():
            x, y = fa.get_tensor(name), fb.get_tensor(name)
            count += int((x.view(torch.int16) != y.view(torch.int16)).sum())
    return {"changed": count}


def phase_floor_count_nonzero(base: Path, ft: Path) -> dict:
    """(a) with torch.count_nonzero: torch's default bool .sum() widens to int64 (slow, and a
    full-size int64 temporary), so this is the floor without that artefact."""
    import torch
    from safetensors import safe_open

    count = 0
    with safe_open(str(base / "model.safetensors"), "pt") as fa, safe_open(str(ft / "model.safetensors"), "pt") as fb:
        for name in fa.keys():
            x, y = fa.get_tensor(name), fb.get_tensor(name)
            count += int(torch.count_nonzero(x.view(torch.int16) != y.view(torch.int16)))
    return {"changed": count}


def phase_analysis(base: Path, ft: Path) -> dict:
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates

    an = analyze_updates(base, [ft], spectra=SpectraOptions(enabled=False))
    rep = an.reports[0]
    return {"changed": rep.changed, "masks": len(rep.masks), "changed@1e-05": int(rep.tensors["changed@1e-05"].sum())}


def phase_naive(base: Path, ft: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    m0 = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    m1 = AutoModelForCausalLM.from_pretrained(ft, dtype=torch.bfloat16)
    sd1 = dict(m1.named_parameters())
    zeros = close = 0.0
    n = 0
    with torch.no_grad():
        for name, p in m0.named_parameters():
            delta = sd1[name] - p  # in bf16, as the paper's script
            k = delta.numel()
            zeros += float((delta == 0).float().mean()) * k
            close += float(torch.isclose(delta, torch.zeros_like(delta), atol=1e-5).float().mean()) * k
            n += k
    return {"changed": n - round(zeros), "changed@1e-05": n - round(close)}


# b0: (b) with the NumPy kernels (SUBNETVIZ_JIT=0), the pass before the compiled one, for comparison
PHASES = {
    "a": phase_floor,
    "a2": phase_floor_count_nonzero,
    "b": phase_analysis,
    "b0": phase_analysis,
    "c": phase_naive,
}


def run_child(phase: str, base: Path, ft: Path) -> dict:
    """Run one phase in a fresh interpreter; sample its RssAnon from here every 2 ms."""
    cmd = [sys.executable, "-m", "benches.bench_streaming", "--phase", phase, "--base", str(base), "--ft", str(ft)]
    env = {**os.environ, "SUBNETVIZ_JIT": "0"} if phase == "b0" else None
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=root, env=env)
    peak = 0
    status = f"/proc/{proc.pid}/status"
    while proc.poll() is None:
        try:
            with open(status) as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]))
                        break
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.002)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_anon_mb"] = peak / 1024
    return result


def child_main(phase: str, base: Path, ft: Path) -> None:
    import torch

    torch.set_num_threads(1)
    warm = 0.0
    if phase in ("b", "b0"):  # import the library before the clock starts, as (a) and (c) import theirs
        import subnetviz.analysis.updates  # noqa: F401
        from subnetviz.analysis import bits_jit

        warm = bits_jit.warm(("bfloat16",))  # numba and the bf16 kernel (from the on-disk cache): reported apart
    if phase == "c":
        import transformers  # noqa: F401
    t0, c0 = time.perf_counter(), time.process_time()
    result = PHASES[phase](base, ft)
    result["seconds"] = time.perf_counter() - t0
    result["cpu_seconds"] = time.process_time() - c0
    result["warm_seconds"] = warm
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--densities", default="0.05,0.3,0.9", help="shares of changed entries, one pair each")
    ap.add_argument("--repeat", type=int, default=2, help="runs of (a') and (b); the fastest counts")
    ap.add_argument("--dir", help="where to write the pair (default: a new temp dir, deleted at the end)")
    ap.add_argument("--skip-naive", action="store_true", help="skip (a) and (c) (run at 30 %% only)")
    ap.add_argument("--numpy-too", action="store_true", help="also (b0): (b) with the NumPy kernels (SUBNETVIZ_JIT=0)")
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ft", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return child_main(args.phase, args.base, args.ft)

    import torch

    torch.set_num_threads(1)
    parent = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    shapes = qwen_shapes(args.layers)
    need = 2 * 2 * sum(int(torch.Size(s).numel()) for s in shapes.values())
    free = shutil.disk_usage(parent).free
    if free < need + (1 << 30):
        raise SystemExit(f"{parent}: {free / 2**30:.1f} GiB free; the pair needs {need / 2**30:.1f} GiB + 1 GiB spare.")
    largest = max(int(torch.Size(s).numel()) for s in shapes.values()) * 2
    limit_mb = (4 * largest + 300 * 2**20) / 2**20
    names = {
        "a": "(a) floor: int16 views, .sum()",
        "a2": "(a') floor: count_nonzero",
        "b": "(b) analyze_updates (default)",
        "b0": "(b0) the same, NumPy kernels",
        "c": "(c) naive: from_pretrained x2",
    }
    summary = []
    print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for share in (float(x) for x in args.densities.split(",")):
        work = Path(tempfile.mkdtemp(prefix="bench-streaming-", dir=parent))
        try:
            t0 = time.perf_counter()
            base, ft, planted, params = write_pair(work, args.layers, changed_share=share)
            print(
                f"\n== {share:.0%} changed: wrote {need / 2**30:.2f} GiB ({params:,} params per checkpoint, "
                f"{planted:,} changed) in {time.perf_counter() - t0:.1f} s"
            )
            extra = ("a", "c") if share == CHANGED and not args.skip_naive else ()
            results = {}
            for phase in ("a2", "b", *extra):
                # (a') and (b) alternate, so a noisy neighbour slows both alike
                results[phase] = None
            runs: dict[str, list[dict]] = {p: [] for p in results}
            alternated = ("a2", "b", "b0") if args.numpy_too else ("a2", "b")
            for phase in alternated[2:]:
                runs[phase] = []
            for _ in range(args.repeat):
                for phase in alternated:
                    runs[phase].append(run_child(phase, base, ft))
            for phase in extra:
                runs[phase].append(run_child(phase, base, ft))
            for phase, rs in runs.items():
                results[phase] = min(rs, key=lambda r: r["seconds"])
                results[phase]["peak_anon_mb"] = max(r["peak_anon_mb"] for r in rs)
                got = results[phase]["changed"]  # (c) sums fp32 means: agrees to rounding only
                assert got == planted if phase != "c" else abs(got - planted) <= 1e-5 * params, (phase, got, planted)
            print(f"{'phase':34s} {'seconds':>8s} {'CPU s':>7s} {'peak RssAnon MB':>16s} {'limit MB':>9s}")
            for k, r in results.items():
                print(
                    f"{names[k]:34s} {r['seconds']:8.2f} {r['cpu_seconds']:7.2f} {r['peak_anon_mb']:16.0f} {limit_mb:9.0f}"
                )
            a2, b = results["a2"]["seconds"], results["b"]["seconds"]
            cpu = results["b"]["cpu_seconds"] / results["a2"]["cpu_seconds"]
            print(
                f"kernel load before the clock (numba + bf16 kernel from cache): {results['b']['warm_seconds']:.2f} s"
            )
            if "b0" in results:
                print(f"(b0)/(a') = {results['b0']['seconds'] / a2:.2f}   (the NumPy kernels, same run)")
            mem = results["b"]["peak_anon_mb"]
            summary.append((share, a2, b, mem, cpu))
            if "a" in results:
                print(f"(b)/(a) = {b / results['a']['seconds']:.2f}   (the old floor with the int64 bool sum)")
            if "c" in results:
                c = results["c"]["seconds"]
                print(f"(c)/(b) = {c / b:.2f}   goal >= 4.0   {'OK' if c >= 4 * b else 'MISSED'}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{'changed':>8s} {'floor s':>8s} {'analysis s':>10s} {'ratio':>8s} {'CPU ratio':>9s} {'goal':>5s} "
        f"{'peak MB':>8s} {'limit MB':>8s}"
    )
    for share, a2, b, mem, cpu in summary:
        ok = "OK" if b <= 2.5 * a2 and mem <= limit_mb else "MISSED"
        print(f"{share:8.0%} {a2:8.2f} {b:10.2f} {b / a2:8.2f} {cpu:9.2f} {'2.5':>5s} {mem:8.0f} {limit_mb:8.0f}  {ok}")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"(floor = reading both files and count_nonzero of the integer views; limit = 4 x largest tensor "
        f"{largest / 2**20:.0f} MB + 300 MB)"
    )


if __name__ == "__main__":
    main()
