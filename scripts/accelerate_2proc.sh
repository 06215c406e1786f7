#!/usr/bin/env bash
# Demonstration: one masked training config run by 2 CPU processes (DDP over gloo) through
# `accelerate launch`, the same `python -m subnetviz train --config FILE` a single process runs.
# Builds a tiny Llama + two-digit-addition data + a random 50 % mask in a temporary folder,
# then checks that both processes trained together and every entry outside the mask stayed
# bit-identical. Usage: bash scripts/accelerate_2proc.sh [sft|dpo|grpo]   (default: grpo)
set -euo pipefail
cd "$(dirname "$0")/.."
ALGO=${1:-grpo}
PY=${PY:-.venv/bin/python}
ACCELERATE=${ACCELERATE:-.venv/bin/accelerate}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
WORK=$(mktemp -d /tmp/subnetviz-accel-XXXXXX)

"$PY" - "$WORK" "$ALGO" <<'PYEOF'
import json, sys
from pathlib import Path
from tests.training_fixtures import make_tiny_llama, write_addition_data, write_half_mask
work, algo = Path(sys.argv[1]), sys.argv[2]
base = make_tiny_llama(work / "base")
data = write_addition_data(work / "data", n=32)
mask = write_half_mask(work / "half.safetensors", base, p=0.5, seed=0)
if algo == "grpo":  # one-digit answers and one-token completions: a random model gets some reward
    rows = [{"prompt": f"{a}+{b}=", "answer": str((a + b) % 10)} for a in range(6) for b in range(6)]
    data["grpo"].write_text("".join(json.dumps(r) + "\n" for r in rows))
# weight_decay 0: every change inside the mask then comes from (all-reduced) gradients.
cfg = {"algorithm": algo, "base": str(base), "data": str(data[algo]), "output_dir": str(work / "out"),
       "mask": str(mask), "steps": 4, "learning_rate": 1e-2, "batch_size": 8, "num_generations": 8,
       "max_completion_length": 1, "weight_decay": 0.0, "save_steps": [2]}
(work / "config.json").write_text(json.dumps(cfg, indent=2))
PYEOF

# accelerate 1.15: `--cpu --num_processes 2` starts ONE process on a single machine (its multi-CPU
# mode needs MPI: `--mpirun_hostfile`, and there is no mpirun here). `--multi_gpu` goes through
# torch.distributed.run (torchrun) instead; with no CUDA GPU the trainer sets use_cpu=True, so
# the 2 processes form a CPU DDP group over gloo. On a GPU machine the same line is multi-GPU DDP.
"$ACCELERATE" launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
    --num_cpu_threads_per_process 1 -m subnetviz train --config "$WORK/config.json" 2>&1 | tee "$WORK/launch.log"

"$PY" - "$WORK" <<'PYEOF'
import json, sys
from pathlib import Path
s = json.loads((Path(sys.argv[1]) / "out" / "train_summary.json").read_text())
print(f"num_processes={s['num_processes']} steps_done={s['steps_done']} mask_check={s['mask_check']}")
ok = s["num_processes"] == 2 and s["mask_check"]["outside_mask_identical"] and s["mask_check"]["changed_inside"] > 0
print("OK: 2-process masked run, outside-mask entries bit-identical" if ok else "FAILED")
sys.exit(0 if ok else 1)
PYEOF
