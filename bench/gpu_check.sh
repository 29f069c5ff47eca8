#!/usr/bin/env bash
# The paper preset's GPU code paths at tiny size, in well under 8 minutes on one GPU:
#   Ray Train over NCCL (the teacher, the classifier, the recommender and the LoRA generator, one GPU worker each),
#   LoRA on a bf16 base, GPU actor pools (emotion inference, review sentences, context embedding, generation,
#   the judge), and the Serve app with its Generator replica on the GPU.
# It prints which processes held GPU memory (nvidia-smi, sampled every 2 s) and a chat answer from the GPU app.
# Without a CUDA GPU it says so and exits 0.
#   bash bench/gpu_check.sh [RUN_DIR]      (default: a fresh runs/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: skipped, no CUDA GPU visible to torch on this machine"
  exit 0
fi
RUN=${1:-runs/gpu-check}
rm -rf "$RUN"
export RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
LOG=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader -l 2 >"$LOG/gpu.csv" 2>/dev/null &
WATCH=$!
SERVE=
trap 'kill $WATCH 2>/dev/null || true; [ -n "$SERVE" ] && kill -INT $SERVE 2>/dev/null || true' EXIT

GPU=(
  emotion.teacher.train.use_gpu=true emotion.classifier.train.use_gpu=true rec.train.use_gpu=true
  gen.generator.train.use_gpu=true gen.generator.method=lora gen.generator.model=smollm2-135m-instruct
  gen.generator.dtype=bfloat16 emotion.infer_pool.gpus=0.25 gen.review_pool.gpus=0.25 rec.context_pool.gpus=0.25
  gen.respond_pool.gpus=0.5 eval.score_pool.gpus=0.25
)
SETS=()
for s in "${GPU[@]}"; do SETS+=(--set "$s"); done
start=$(date +%s)
ecr-ray run --config tiny --run-dir "$RUN" "${SETS[@]}" 2>&1 | grep -E "^\[|NCCL|nccl|Error|error" | grep -v "^\[20" || true
echo "gpu_check: the tiny pipeline on the GPU took $(( $(date +%s) - start )) s"
test -f "$RUN/reports/gen-eval-dev.json" || { echo "gpu_check: FAILED, the pipeline did not reach gen-eval"; exit 1; }

sed -e 's/ray_actor_options: {num_cpus: 0.5}/ray_actor_options: {num_cpus: 0.5, num_gpus: 1}/' serve/config.yaml >"$LOG/serve.yaml"
ECR_RUN_DIR="$RUN" serve run "$LOG/serve.yaml" >"$LOG/serve.log" 2>&1 &
SERVE=$!
for _ in $(seq 120); do curl -sf localhost:8000/readyz >/dev/null && break; sleep 2; done
curl -sf localhost:8000/readyz >/dev/null || { echo "gpu_check: FAILED, the GPU app was not ready in 240 s"; tail -20 "$LOG/serve.log"; exit 1; }
curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' \
  -d '{"messages": [{"role": "user", "content": "I loved Inception. Anything like it?"}], "max_tokens": 24}' | head -c 600
echo
kill -INT $SERVE && wait $SERVE || true
SERVE=
kill $WATCH 2>/dev/null || true
echo "gpu_check: processes that held GPU memory (pid, name, most MiB seen):"
awk -F', ' '{gsub(/ MiB/, "", $3); if ($3 + 0 > most[$1 " " $2]) most[$1 " " $2] = $3 + 0} END {for (p in most) print "  " p, most[p]}' "$LOG/gpu.csv"
echo "gpu_check: done in $(( $(date +%s) - start )) s"
