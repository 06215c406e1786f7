"""Benchmark: the default update analysis per stored form, one thread, against a bf16 pair in the same run.

Writes one pair of checkpoints per form (same parameter count, ~30 % of weights changed), then
runs ``analyze_updates(base, [ft], spectra off)`` on each in its own process, sampling its peak
anonymous memory (``RssAnon``) every 2 ms:

- ``bf16``: 4 matrices of 2048 × 4096 (the baseline);
- ``fp8``: the same as ``float8_e4m3fn`` codes + 128 × 128 ``weight_scale_inv`` blocks (5 % of the
  scales changed too): codes *and* the effective (dequantised, float32) comparison;
- ``int8``: bitsandbytes int8 codes + ``SCB`` (codes and effective);
- ``lora``: the bf16 base + a rank-16 LoRA adapter on all four matrices, merged per tensor;
- ``moe``: one Qwen-MoE layer of 64 experts (gate/up/down 512 × 1024 each) + router;
- ``mxfp4``: one gpt-oss layer of 16 packed experts (gate_up 1024 × 2048, down 1024 × 1024 each) stored
  as the release does (4-bit codes + E8M0 scales), against a bf16 finetune of the dequantised weights:
  every expert is dequantised when read (checkpoints.mxfp4). With it, the dequantisation alone on
  gpt-oss-20b's expert shape against transformers' own, in the same run;
- ``ct-int4``, ``nf4``, ``awq``, ``nvfp4``: the four matrices as compressed-tensors' pack-quantized int4
  (groups of 128, asymmetric: int32 words + bf16 scales + packed zero points), bitsandbytes NF4 (double
  quantisation: bytes + uint8 absmax + nested absmax and quant_state), AutoAWQ GEMM (qweight / qzeros /
  scales, groups of 128) and compressed-tensors' NVFP4 (bytes + FP8 scales per 16 + global scale), codes
  unpacked into the weight's shape when read and compared dequantised; ~30 % of the stored words or bytes
  have a code moved, and 5 % of the scales too (written in the formats' layouts, random codes: a benchmark
  of reading and comparing, not of quantising).

Printed per form: seconds, ns per parameter, the ratio to bf16 per parameter, the same in CPU time of
the analysis (process time: steadier than wall time on a shared machine), peak RssAnon against
4 × the largest tensor (as stored) + 300 MB, and (another child) the wall time of the same analysis run
again in its process (the rate of a server or notebook analysing several checkpoints; the first analysis also pays
the process's first use of its buffers and result tables). Goals (issue 10): fp8 ≤ 2 × bf16 per parameter; every
form within its memory limit.

    .venv/bin/python -m benches.bench_forms             # ~0.5 GB in a temp dir, deleted after
    .venv/bin/python -m benches.bench_forms --rows 1024 # a smaller, quicker run
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

FORMS = ("bf16", "fp8", "int8", "lora", "moe", "mxfp4", "ct-int4", "nf4", "awq", "nvfp4")
CHANGED = 0.30


def _cfg(folder: Path, **extra) -> None:
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False, **extra}))


def _flip(x, frac: float, gen):
    """Move a fraction ``frac`` of the entries of a 16- or 8-bit integer view by one step."""
    import torch

    mask = torch.rand(x.shape, generator=gen) < frac
    return torch.where(mask, x ^ 1, x)


def write_pairs(root: Path, rows: int) -> dict[str, int]:
    """Every form's base/ft folders under ``root``; returns form -> largest tensor in stored bytes."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    names = [f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("gate_proj", "up_proj")]
    shape = (rows, 4096)
    largest: dict[str, int] = {}
    base, ft, q8b, q8f, s_b, s_f, i8b, i8f, scb = {}, {}, {}, {}, {}, {}, {}, {}, {}
    for n in names:
        w = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        base[n] = w
        ft[n] = _flip(w.view(torch.int16), CHANGED, gen).view(torch.bfloat16)
        codes = (torch.randn(shape, generator=gen) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
        q8b[n] = codes
        q8f[n] = _flip(codes.view(torch.int8), CHANGED, gen).view(torch.float8_e4m3fn)
        s = torch.rand(rows // 128, 4096 // 128, generator=gen) * 1e-3 + 1e-4
        s_b[n + "_scale_inv"] = s
        s_f[n + "_scale_inv"] = torch.where(torch.rand(s.shape, generator=gen) < 0.05, s * 1.01, s)
        c = torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8)
        i8b[n], i8f[n] = c, _flip(c, CHANGED, gen)
        scb[n.replace(".weight", ".SCB")] = torch.rand(rows, generator=gen) + 0.1
    for form, (b, f, extra, nbytes) in {
        "bf16": (base, ft, {}, rows * 4096 * 2),
        "fp8": (
            {**q8b, **s_b},
            {**q8f, **s_f},
            {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
            rows * 4096,
        ),
        "int8": (
            {**i8b, **scb},
            {**i8f, **scb},
            {"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}},
            rows * 4096,
        ),
    }.items():
        for side, sd in (("base", b), ("ft", f)):
            d = root / form / side
            d.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
            _cfg(d, **extra)
        largest[form] = nbytes
    # LoRA: the bf16 base + a rank-16 adapter on every matrix.
    (root / "lora").mkdir()
    (root / "lora" / "base").symlink_to(root / "bf16" / "base")
    ad = root / "lora" / "ft"
    ad.mkdir()
    lora = {}
    for n in names:
        m = n.removesuffix(".weight")
        lora[f"base_model.model.{m}.lora_A.weight"] = torch.randn(16, 4096, generator=gen) * 0.01
        lora[f"base_model.model.{m}.lora_B.weight"] = torch.randn(rows, 16, generator=gen) * 0.01
    save_file(lora, str(ad / "adapter_model.safetensors"))
    (ad / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["gate_proj", "up_proj"]})
    )
    largest["lora"] = rows * 4096 * 2
    # MoE: one layer, 64 experts of gate/up (I=512 × H=1024) and down (1024 × 512), and the router.
    experts, hid, inter = 64, 1024, 512
    mb, mf = {}, {}
    for e in range(experts):
        for p, shp in (("gate_proj", (inter, hid)), ("up_proj", (inter, hid)), ("down_proj", (hid, inter))):
            n = f"model.layers.0.mlp.experts.{e}.{p}.weight"
            w = (torch.randn(shp, generator=gen) * 0.02).to(torch.bfloat16)
            mb[n], mf[n] = w, _flip(w.view(torch.int16), CHANGED, gen).view(torch.bfloat16)
    r = (torch.randn(experts, hid, generator=gen) * 0.02).to(torch.bfloat16)
    mb["model.layers.0.mlp.gate.weight"], mf["model.layers.0.mlp.gate.weight"] = r, r.clone()
    for side, sd in (("base", mb), ("ft", mf)):
        d = root / "moe" / side
        d.mkdir(parents=True)
        save_file(sd, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "num_experts": experts}))
    largest["moe"] = inter * hid * 2
    # MXFP4 (gpt-oss): one layer's packed experts as the release stores them (16 experts, gate_up (E, H, 2I)
    # and down (E, I, H) in 4-bit codes + E8M0 scales) against a bf16 finetune saved from the dequantised
    # weights (transformers' own dequantisation) with 30 % of the entries moved.
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    experts, hid, inter = 16, 1024, 1024
    xb, xf = {}, {}
    for p, (n_in, n_out) in (("gate_up_proj", (hid, 2 * inter)), ("down_proj", (inter, hid))):
        n = f"model.layers.0.mlp.experts.{p}"
        blocks = torch.randint(0, 256, (experts, n_out, n_in // 32, 16), generator=gen, dtype=torch.uint8)
        scales = torch.randint(118, 134, (experts, n_out, n_in // 32), generator=gen, dtype=torch.uint8)
        xb[f"{n}_blocks"], xb[f"{n}_scales"] = blocks, scales
        w = convert_moe_packed_tensors(blocks, scales)  # (E, in, out) bf16
        xf[n] = _flip(w.view(torch.int16), CHANGED, gen).view(torch.bfloat16)
    for side, sd, extra in (
        ("base", xb, {"quantization_config": {"quant_method": "mxfp4"}}),
        ("ft", xf, {}),
    ):
        d = root / "mxfp4" / side
        d.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"model_type": "gpt_oss", "num_local_experts": experts, **extra}))
    largest["mxfp4"] = experts * hid * 2 * inter * 2  # gate_up in bf16 (the finetune's, and the base's once read)
    largest.update(_write_codes(root, names, rows, gen))
    return largest


def _moved_scales(s, gen):
    """``s`` with 5 % of its entries one step of their dtype up (an integer view's last bit flipped)."""
    import torch

    iv = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[s.dtype.itemsize]
    flip = torch.rand(s.shape, generator=gen) < 0.05
    return torch.where(flip, s.view(iv) ^ 1, s.view(iv)).view(s.dtype)


def _write_codes(root: Path, names: list[str], rows: int, gen) -> dict[str, int]:
    """The four formats whose codes a checkpoint reader unpacks (checkpoints.ct_packed, bnb4, awq, nvfp4):
    base/ft folders of the four matrices in each; form -> the largest tensor once unpacked (its codes, 1 byte
    each: what the reader allocates)."""
    import torch
    from safetensors.torch import save_file

    cols, group = 4096, 128
    out: dict[str, tuple[dict, dict, dict]] = {"ct-int4": ({}, {}, {}), "nf4": ({}, {}, {}), "awq": ({}, {}, {})}
    out["nvfp4"] = ({}, {}, {})
    words = lambda *shape: torch.randint(-(2**31), 2**31 - 1, shape, generator=gen, dtype=torch.int32)  # noqa: E731
    for n in names:
        stem = n.removesuffix(".weight")
        b, f, _ = out["ct-int4"]
        packed = words(rows, cols // 8)
        scale = (torch.rand(rows, cols // group, generator=gen) * 1e-2 + 1e-3).to(torch.bfloat16)
        zero = words(rows * 4 // 32, cols // group)
        b.update({f"{stem}.weight_packed": packed, f"{stem}.weight_scale": scale, f"{stem}.weight_zero_point": zero})
        b[f"{stem}.weight_shape"] = torch.tensor([rows, cols])
        f.update({**{k: v for k, v in b.items() if k.startswith(stem)}})
        f[f"{stem}.weight_packed"] = _flip(packed, CHANGED, gen)
        f[f"{stem}.weight_scale"] = _moved_scales(scale, gen)
        b, f, _ = out["nf4"]
        nbytes, blocks = rows * cols // 2, rows * cols // 64
        codes = torch.randint(0, 256, (nbytes, 1), generator=gen, dtype=torch.uint8)
        absmax = torch.randint(0, 256, (blocks,), generator=gen, dtype=torch.uint8)
        state = {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [rows, cols]}
        state |= {"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01}
        raw = torch.frombuffer(bytearray(json.dumps(state).encode()), dtype=torch.uint8)
        b.update({n: codes, f"{n}.absmax": absmax, f"{n}.quant_state.bitsandbytes__nf4": raw})
        b[f"{n}.nested_absmax"] = torch.rand(-(-blocks // 256), generator=gen) * 1e-2
        b[f"{n}.nested_quant_map"] = torch.linspace(-1, 1, 256)
        b[f"{n}.quant_map"] = torch.linspace(-1, 1, 16)
        f.update({k: v for k, v in b.items() if k.startswith(n)})
        f[n], f[f"{n}.absmax"] = _flip(codes, CHANGED, gen), _moved_scales(absmax, gen)
        b, f, _ = out["awq"]
        qweight, qzeros = words(cols, rows // 8), words(cols // group, rows // 8)
        scales = (torch.rand(cols // group, rows, generator=gen) * 1e-2 + 1e-3).to(torch.float16)
        b.update({f"{stem}.qweight": qweight, f"{stem}.qzeros": qzeros, f"{stem}.scales": scales})
        f.update({k: v for k, v in b.items() if k.startswith(stem)})
        f[f"{stem}.qweight"], f[f"{stem}.scales"] = _flip(qweight, CHANGED, gen), _moved_scales(scales, gen)
        b, f, _ = out["nvfp4"]
        fp4 = torch.randint(0, 256, (rows, cols // 2), generator=gen, dtype=torch.uint8)
        fp8 = (torch.rand(rows, cols // 16, generator=gen) * 4 + 0.5).to(torch.float8_e4m3fn)
        b.update({f"{stem}.weight_packed": fp4, f"{stem}.weight_scale": fp8})
        b[f"{stem}.weight_global_scale"] = torch.tensor([448.0 * 6 / 0.05])
        f.update({k: v for k, v in b.items() if k.startswith(stem)})
        f[f"{stem}.weight_packed"], f[f"{stem}.weight_scale"] = _flip(fp4, CHANGED, gen), _moved_scales(fp8, gen)
    ct = {"quant_method": "compressed-tensors", "format": "pack-quantized"}
    int4 = {"type": "int", "num_bits": 4, "strategy": "group", "group_size": group, "symmetric": False}
    configs = {
        "ct-int4": {**ct, "config_groups": {"g": {"format": "pack-quantized", "weights": int4}}},
        "nf4": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
        "awq": {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"},
        "nvfp4": {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"},
    }
    for form, (b, f, _) in out.items():
        for side, sd in (("base", b), ("ft", f)):
            d = root / form / side
            d.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
            _cfg(d, quantization_config=configs[form])
    return dict.fromkeys(out, rows * cols)


def run_one(form: str, root: Path) -> None:
    """Child process: the default analysis of one form's pair; prints JSON. ``form@numpy``: the same with
    the NumPy kernels (the parent sets SUBNETVIZ_JIT=0)."""
    import torch

    torch.set_num_threads(1)
    from subnetviz.analysis import bits_jit
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates

    form = form.removesuffix("@numpy")
    warm = bits_jit.warm()  # numba and the kernels (from the on-disk cache) before the clock, reported apart
    t0, c0 = time.perf_counter(), time.process_time()
    a = analyze_updates(
        str(root / form / "base"), [str(root / form / "ft")], spectra=SpectraOptions(enabled=False), device="cpu"
    )
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    again = None
    if os.environ.get("BENCH_FORMS_AGAIN"):  # a separate child, so the peak above stays one analysis's
        # The same analysis again in this process: a server or a notebook analysing several checkpoints
        # runs at this rate; the first one also pays the process's first use of its buffers and tables.
        t1 = time.perf_counter()
        analyze_updates(
            str(root / form / "base"), [str(root / form / "ft")], spectra=SpectraOptions(enabled=False), device="cpu"
        )
        again = time.perf_counter() - t1
    rep = a.reports[0]
    print(
        json.dumps(
            {
                "seconds": sec,
                "cpu": cpu,
                "again": again,
                "params": rep.numel,
                "changed": rep.changed,
                "changed_codes": int(rep.tensors["changed_codes"].sum()),
                "warm": warm,
            }
        )
    )


def _rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure_once(form: str, root: Path, again: bool = False) -> dict:
    """One child process running the analysis of ``form``: its JSON and peak RssAnon (``again``: the
    analysis twice, the second timed as ``again``; its peak is not one analysis's)."""
    env = {**os.environ, **({"SUBNETVIZ_JIT": "0"} if form.endswith("@numpy") else {})}
    if again:
        env["BENCH_FORMS_AGAIN"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benches.bench_forms", "--run", form, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _rss_anon(proc.pid))
        time.sleep(0.002)
    out = json.loads(proc.stdout.read().strip().splitlines()[-1])
    out["peak_anon"] = peak
    return out


def measure(forms: list[str], root: Path, repeats: int) -> dict[str, dict]:
    """Best wall time, best CPU time and largest peak of each form over ``repeats`` rounds; the forms
    take turns within a round, so a change of load on a shared machine reaches them alike."""
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for form in forms:
            out = measure_once(form, root)
            out["again"] = measure_once(form, root, again=True)["again"]
            b = best.setdefault(form, out)
            if out["seconds"] < b["seconds"]:
                b["seconds"] = out["seconds"]
            b["cpu"] = min(b["cpu"], out["cpu"])
            b["again"] = min(b["again"], out["again"])
            b["peak_anon"] = max(b["peak_anon"], out["peak_anon"])
    return best


def dequant_ratio(experts: int = 8) -> None:
    """The MXFP4 dequantisation alone on gpt-oss-20b's gate_up shape (here ``experts`` of its 32 experts:
    blocks (E, 5760, 90, 16)), against transformers' own ``convert_moe_packed_tensors`` in the same run
    (best of 3 each, one thread); the results are checked equal bit for bit."""
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from subnetviz.analysis import bits_jit
    from subnetviz.checkpoints.mxfp4 import dequantize

    torch.set_num_threads(1)
    bits_jit.warm(("mxfp4",))
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (experts, 5760, 90, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(118, 134, (experts, 5760, 90), generator=g, dtype=torch.uint8)
    times = {}
    for name, fn in (
        ("subnetviz", lambda: dequantize(blocks, scales)),
        ("transformers", lambda: convert_moe_packed_tensors(blocks, scales)),
    ):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = (best, out)
    n = times["subnetviz"][1].numel()
    same = torch.equal(times["subnetviz"][1].view(torch.int16), times["transformers"][1].view(torch.int16))
    ours, theirs = times["subnetviz"][0] / n * 1e9, times["transformers"][0] / n * 1e9
    print(
        f"MXFP4 dequantisation, {experts} experts of gpt-oss-20b's gate_up ({n:,} parameters): {ours:.2f} ns/param, "
        f"transformers' convert_moe_packed_tensors {theirs:.2f} ns/param ({theirs / ours:.1f}x); bit for bit: {same}"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2048, help="rows of each 4096-wide matrix (multiple of 128)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--forms", default=",".join(FORMS), help="comma-separated subset (bf16 always runs)")
    ap.add_argument(
        "--numpy-too", action="store_true", help="also bf16 and fp8 with the NumPy kernels (SUBNETVIZ_JIT=0)"
    )
    ap.add_argument("--run", nargs=2, metavar=("FORM", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        run_one(args.run[0], Path(args.run[1]))
        return 0
    root = Path(tempfile.mkdtemp(prefix="bench-forms-"))
    try:
        largest = write_pairs(root, args.rows)
        chosen = ["bf16", *(f for f in FORMS if f != "bf16" and f in args.forms.split(","))]
        if args.numpy_too:
            chosen += ["bf16@numpy", *(["fp8@numpy"] if "fp8" in chosen else [])]
        print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        results = measure(chosen, root, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base_ns = results["bf16"]["seconds"] / results["bf16"]["params"] * 1e9
    base_cpu = results["bf16"]["cpu"] / results["bf16"]["params"] * 1e9
    base_again = results["bf16"]["again"] / results["bf16"]["params"] * 1e9
    ok = True
    print(
        f"{'form':6} {'params':>11} {'seconds':>8} {'ns/param':>9} {'vs bf16':>8} {'cpu ns/p':>9} {'vs bf16':>8} "
        f"{'peak MB':>8} {'limit MB':>9} {'again ns/p':>11} {'vs bf16':>8}"
    )
    for f, r in results.items():
        if f.endswith("@numpy"):
            continue
        ns, cpu = r["seconds"] / r["params"] * 1e9, r["cpu"] / r["params"] * 1e9
        again = r["again"] / r["params"] * 1e9
        limit = 4 * largest[f] + 300 * 2**20
        within = r["peak_anon"] <= limit
        ok &= within
        print(
            f"{f:6} {r['params']:>11,} {r['seconds']:>8.3f} {ns:>9.2f} {ns / base_ns:>7.2f}x {cpu:>9.2f} "
            f"{cpu / base_cpu:>7.2f}x {r['peak_anon'] / 2**20:>8.0f} {limit / 2**20:>9.0f} {again:>11.2f} "
            f"{again / base_again:>7.2f}x{'' if within else '  OVER'}"
        )
    print(f"kernel load before the clock (numba + kernels from the on-disk cache): {results['bf16']['warm']:.2f} s")
    if "mxfp4" in results:
        dequant_ratio()
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if "fp8@numpy" in results:
        per = {f: (r["seconds"] / r["params"], r["cpu"] / r["params"]) for f, r in results.items()}
        print(
            "NumPy kernels, same run: fp8 / bf16 per parameter "
            f"wall {per['fp8@numpy'][0] / per['bf16@numpy'][0]:.2f}x, CPU {per['fp8@numpy'][1] / per['bf16@numpy'][1]:.2f}x; "
            f"compiled / NumPy: bf16 CPU {per['bf16'][1] / per['bf16@numpy'][1]:.2f}x, "
            f"fp8 CPU {per['fp8'][1] / per['fp8@numpy'][1]:.2f}x"
        )
    if "fp8" not in results:
        return 0 if ok else 1
    fp8 = results["fp8"]["seconds"] / results["fp8"]["params"] * 1e9 / base_ns
    fp8_cpu = results["fp8"]["cpu"] / results["fp8"]["params"] * 1e9 / base_cpu
    fp8_again = results["fp8"]["again"] / results["fp8"]["params"] * 1e9 / base_again
    print(
        f"goal fp8 effective <= 2x bf16 per parameter: wall {fp8:.2f}x, CPU time {fp8_cpu:.2f}x "
        f"(first analysis of a fresh process), {fp8_again:.2f}x wall for a further one in the same process: "
        f"{'met' if max(fp8, fp8_cpu) <= 2 else 'NOT met'}; memory {'within' if ok else 'OVER'} "
        "4 x largest tensor + 300 MB"
    )
    return 0 if (max(fp8, fp8_cpu) <= 2 and ok) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
