#!/usr/bin/env bash
# Demonstration: one masked training config run by 2 processes, the same
# `python -m subnetviz train --config FILE` a single process runs: the config's strategy and
# num_processes make it start `accelerate launch` itself (DDP, FSDP2, ZeRO-2/3 over gloo on CPU;
# ZeRO needs deepspeed: requirements-deepspeed.txt). Builds a tiny Llama + addition data + a random 50 % mask in a
# temporary folder, then checks that both processes trained together and every entry outside the
# mask stayed bit-identical (saved bf16 model and gathered full state dict).
# Usage: bash scripts/accelerate_2proc.sh [sft|dpo|grpo] [ddp|fsdp2|zero2|zero3]   (default: grpo ddp)
# NPROC=1 for a one-GPU machine (zero2/3 and fsdp2 then run as a group of one).
set -euo pipefail
cd "$(dirname "$0")/.."
ALGO=${1:-grpo}
STRATEGY=${2:-ddp}
export NPROC=${NPROC:-2}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
WORK=$(mktemp -d /tmp/subnetviz-accel-XXXXXX)

"$PY" - "$WORK" "$ALGO" "$STRATEGY" <<'PYEOF'
import json, os, sys
from pathlib import Path
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data, write_half_mask
work, algo, strategy = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
base = make_tiny_llama(work / "base")
data = write_addition_data(work / "data", n=32)
mask = write_half_mask(work / "half.safetensors", base, p=0.5, seed=0)
if algo == "grpo":  # one-digit answers and one-token completions: a random model gets some reward
    rows = [{"prompt": f"{a}+{b}=", "answer": str((a + b) % 10)} for a in range(6) for b in range(6)]
    data["grpo"].write_text("".join(json.dumps(r) + "\n" for r in rows))
# weight_decay 0: every change inside the mask then comes from (all-reduced) gradients.
cfg = {"algorithm": algo, "base": str(base), "data": str(data[algo]), "output_dir": str(work / "out"),
       "mask": str(mask), "steps": 4, "learning_rate": 1e-2, "batch_size": 8, "num_generations": 8,
       "max_completion_length": 1, "weight_decay": 0.0, "save_steps": [2],
       "strategy": strategy, "num_processes": int(os.environ["NPROC"])}
(work / "config.json").write_text(json.dumps(cfg, indent=2))
PYEOF

# The launch: accelerate 1.15's `--cpu --num_processes 2` would start ONE process (its multi-CPU mode
# needs MPI); subnetviz writes an accelerate config of type MULTI_GPU (torchrun), and with no CUDA
# GPU the processes form a CPU group over gloo. The config is kept as out/accelerate_config.yaml.
"$PY" -m subnetviz train --config "$WORK/config.json" 2>&1 | tee "$WORK/launch.log"

"$PY" - "$WORK" <<'PYEOF'
import json, os, sys
from pathlib import Path
s = json.loads((Path(sys.argv[1]) / "out" / "train_summary.json").read_text())
print(f"strategy={s['strategy']} num_processes={s['num_processes']} steps_done={s['steps_done']}")
print(f"mask_check={s['mask_check']}\ngathered_check={s['gathered_check']}\nfsdp2={s.get('fsdp2')}")
ok = s["num_processes"] == int(os.environ["NPROC"]) and all(c["outside_mask_identical"] and c["changed_inside"] > 0
                                     for c in (s["mask_check"], s["gathered_check"]))
print(f"OK: {s['num_processes']}-process masked run, outside-mask entries bit-identical" if ok else "FAILED")
sys.exit(0 if ok else 1)
PYEOF
