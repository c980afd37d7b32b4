#!/usr/bin/env bash
# The `hf-localnat study` run of docs/findings.md ("Which selection makes the better student"): GSM8K, the
# embedded SmolLM2-135M student, CPU. Every step resumes: stop it and run it again to continue.
#
#   nohup docs/study_gsm8k.sh > /tmp/hf_localnat_study/study.log 2>&1 &
#
# The pool is the first TEACHERS teachers' answers (in file order: o1-mini, gpt-4o, claude-3.5-sonnet,
# Qwen2-72B, Llama-3.1-8B) to the first PROMPTS problems of the shared GSM8K pool (GSM8K test); the benchmark is
# GSM8K test problems from row 1000 on, none of them in the pool (the study checks, and step 3 shows it refusing).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/hf_localnat_study}
BIN=.venv/bin
PROMPTS=${PROMPTS:-60}    # training pool: TEACHERS x PROMPTS responses
TEACHERS=${TEACHERS:-5}
PROBLEMS=${PROBLEMS:-60}  # held-out benchmark problems per evaluation (6 evaluations: 5 arms + untrained)
STEPS=${STEPS:-30}        # optimizer steps per arm (batch 2)
ALL="$WORK/gsm_pool$PROMPTS.jsonl"
POOL="$WORK/gsm_pool${PROMPTS}x$TEACHERS.jsonl"
SCORED="$WORK/gsm_pool${PROMPTS}x$TEACHERS.scored.parquet"
HELD_OUT="$WORK/gsm8k_from_1000.jsonl"
mkdir -p "$WORK"

# 1. The pool, scored with the three metrics the arms select by (resumable per chunk of 20 rows).
[ -f "$ALL" ] || $BIN/python dataset_scripts/take_prompts.py ../shared/data/multiteacher/zeroeval_gsm.jsonl \
    "$ALL" --prompts "$PROMPTS"
[ -f "$POOL" ] || $BIN/python -c "import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
keep = list(dict.fromkeys(row['teacher'] for row in rows))[:int(sys.argv[3])]
open(sys.argv[2], 'w').writelines(json.dumps(row) + '\\n' for row in rows if row['teacher'] in keep)" \
    "$ALL" "$POOL" "$TEACHERS"
[ -f "$SCORED" ] || /usr/bin/time -v -o "$WORK/score.time" $BIN/hf-localnat score "$POOL" \
    --metrics global,local,rsr --output "$SCORED" --chunk_rows 20

# 2. The held-out benchmark: GSM8K test rows 1000 on (the pool holds problems 0..PROMPTS-1).
[ -f "$HELD_OUT" ] || tail -n +1001 ../shared/data/benchmarks/gsm8k.jsonl > "$HELD_OUT"

ARGS=(--pool "$SCORED" --arms local_naturalness,global_naturalness,rsr,random,best_teacher
      --best_teacher_by local_naturalness --baseline random --where "correct == True" --k 1
      --max_steps "$STEPS" --per_device_train_batch_size 2 --learning_rate 5e-5 --max_length 1024
      --gradient_checkpointing false --report_to none --save_strategy no --seed 0
      --max_new_tokens 256 --batch_size 12 --limit "$PROBLEMS")

# 3. The contamination guard: the first 20 problems of the benchmark file are pool prompts; this must refuse.
if $BIN/hf-localnat study "${ARGS[@]}" --benchmark ../shared/data/benchmarks/gsm8k.jsonl --limit 20 \
    --output_dir "$WORK/guard"; then
    echo "the contamination guard did not refuse" >&2
    exit 1
fi

# 4. The study itself: 5 arms trained and evaluated, the untrained student evaluated.
/usr/bin/time -v -o "$WORK/study.time" $BIN/hf-localnat study "${ARGS[@]}" --benchmark "$HELD_OUT" \
    --output_dir "$WORK/study"

# 5. The figures of docs/findings.md.
mkdir -p docs/study_gsm8k
cp "$WORK/study/results.json" "$WORK/study/results.md" "$WORK/study/accuracy.png" docs/study_gsm8k/

# 6. What each arm trained on and how its answers were read (the other figures of docs/findings.md).
$BIN/python docs/study_picks.py "$WORK/study"
