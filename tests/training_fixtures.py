"""Data and jobs for the training and runner tests (and the masked-GRPO bench); the tiny model they
train comes from :func:`tests.models.make_tiny_llama`.

- :func:`write_addition_data`: two-digit additions as SFT / DPO / GRPO / eval JSONL.
- :func:`write_half_mask`: a random mask set over every parameter (density ``p``).
- :func:`sleep_job`, :func:`fail_job`: job functions for runner tests (``kind: "python"``).

torch is imported inside the functions that need it, so a test job's worker starts fast.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path


def _pairs(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randrange(10, 50), rng.randrange(10, 50)) for _ in range(n)]


def write_addition_data(folder: str | Path, n: int = 16, seed: int = 0) -> dict[str, Path]:
    """``{kind: path}`` for kinds sft, dpo, grpo, eval (two-digit additions, ``"a+b="`` -> ``"a+b"``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"sft": [], "dpo": [], "grpo": [], "eval": []}
    for a, b in _pairs(n, seed):
        p, ans = f"{a}+{b}=", str(a + b)
        rows["sft"].append({"prompt": p, "completion": ans})
        rows["dpo"].append({"prompt": p, "chosen": ans, "rejected": str(a + b + 1)})
        rows["grpo"].append({"prompt": p, "answer": ans})
    rows["eval"] = rows["grpo"][:8]
    paths = {}
    for kind, rs in rows.items():
        paths[kind] = folder / f"{kind}.jsonl"
        paths[kind].write_text("".join(json.dumps(r) + "\n" for r in rs))
    return paths


def write_half_mask(path: str | Path, model_dir: str | Path, p: float = 0.5, seed: int = 0) -> Path:
    """A random mask with density ``p`` over every parameter of the model in ``model_dir``."""
    import torch
    from safetensors import safe_open

    from subnetviz.masks import MaskSet, save_mask_set

    gen = torch.Generator().manual_seed(seed)
    masks = {}
    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            shape = f.get_slice(name).get_shape()
            masks[name] = torch.rand(shape, generator=gen) < p
    return save_mask_set(path, MaskSet(masks, {"method": "test: random", "p": p}))


def training_inputs(root: Path, mask_seed: int) -> dict:
    """What a training test runs on, under ``root``: a tiny Llama base, the addition data of every algorithm (GRPO's
    with one-digit answers, so its reward varies) and a half mask of the base drawn with ``mask_seed``."""
    from tests.models import make_tiny_llama

    base = make_tiny_llama(root / "base")
    data = write_addition_data(root / "data", n=32)
    rows = [{"prompt": f"{a}+{b}=", "answer": str((a + b) % 10)} for a in range(6) for b in range(6)]
    data["grpo"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    mask = write_half_mask(root / "half.safetensors", base, p=0.5, seed=mask_seed)
    return {"root": root, "base": base, "data": data, "mask": mask}


def write_sft_config(tiny: dict, folder: Path, **kw) -> Path:
    """``folder/config.json``: an SFT job on ``tiny``'s base, data and mask (a fixture's dict of
    :func:`write_addition_data` and :func:`write_half_mask`), writing into ``folder/out``; ``kw`` set or override
    any key (steps, batch size, strategy, ...)."""
    cfg = {
        "algorithm": "sft",
        "base": str(tiny["base"]),
        "data": str(tiny["data"]["sft"]),
        "output_dir": str(Path(folder) / "out"),
        "mask": str(tiny["mask"]),
        **kw,
    }
    path = Path(folder) / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def sleep_job(config: dict, ctx) -> None:
    """Test job: ``seconds`` of sleeping in ``steps`` steps, writing ``outputs/done.txt``."""
    steps = int(config.get("steps", 10))
    for i in range(steps):
        if ctx.should_stop():
            return
        time.sleep(float(config.get("seconds", 1.0)) / steps)
        ctx.progress(i + 1, steps, loss=1.0 / (i + 1))
    (ctx.out_dir / "done.txt").write_text("ok")
    (ctx.out_dir / "gpu.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    (ctx.out_dir / "cluster.txt").write_text(os.environ.get("SUBNETVIZ_RAY_ADDRESS", ""))


def detached_child_job(config: dict, ctx) -> None:
    """Test job: starts a process in a session of its own (as accelerate launch starts a job's ranks), which
    writes into ``outputs.tmp`` twice a second; its pid in ``child.pid`` of the run folder. Then sleeps."""
    import subprocess
    import sys

    script = (  # as a rank saving its model: the folder made again if it is gone
        "import os, sys, time\nwhile True:\n    os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)\n"
        "    open(sys.argv[1], 'a').write('x')\n    time.sleep(0.5)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(ctx.out_dir / "rank.txt")], start_new_session=True)
    (ctx.run_dir / "child.pid").write_text(str(child.pid))
    for i in range(600):
        time.sleep(0.1)
        ctx.progress(i + 1, 600)


def refused_job(config: dict, ctx) -> None:
    """Test job: refuses what it was given, as a job does with a mask that does not fit its model."""
    from subnetviz.errors import MaskError

    raise MaskError("mask m.safetensors does not fit the model: 'w' is not a parameter of the model.")


def fail_job(config: dict, ctx) -> None:
    """Test job: writes a partial output, then raises."""
    (ctx.out_dir / "partial.txt").write_text("half")
    raise ValueError("planned failure")


def failing_job(config: dict, ctx) -> None:
    """Test job: fails as a user's input would, with ``message`` (a SubnetvizError: one line in its log)."""
    from subnetviz.errors import SubnetvizError

    raise SubnetvizError(config["message"])
