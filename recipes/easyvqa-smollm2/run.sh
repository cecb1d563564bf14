#!/usr/bin/env bash
# The full easy-VQA reproduction, from the repository root: data, stages 1 / 2.1 / 2.2 / 3, evaluation
# on the whole test split (9,673 questions). Each stage resumes from its last checkpoint when rerun
# and is skipped once it has completed, so an interrupted run continues where it stopped.
#   bash recipes/easyvqa-smollm2/run.sh [eve train overrides, e.g. train.micro_batch=4]
set -euo pipefail
EVE=${EVE:-.venv/bin/eve}
RUNS=runs/easyvqa-smollm2
[ -f data/easyvqa/train_qa_balanced.jsonl ] || .venv/bin/python -m eve_vlm.data.easyvqa data/easyvqa
for stage in stage1 stage2.1 stage2.2 stage3; do
  # a run stopped by a signal writes a summary too, with "completed": false
  grep -qs '"completed": true' "$RUNS/$stage/summary.json" ||
    "$EVE" train "recipes/easyvqa-smollm2/$stage.yaml" train.resume=auto "$@"
done
"$EVE" eval --model "$RUNS/stage3/model" --task easyvqa --batch-size 32 --output "$RUNS/eval"
