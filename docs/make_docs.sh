#!/usr/bin/env bash
# Rebuild the reports in docs/ from the real data in ../shared/data with the embedded student (CPU).
# Scoring is resumable: stop it and run this again to continue. WORK holds the scored files (not checked in).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/hf_localnat_docs}
BIN=.venv/bin
mkdir -p "$WORK"

# 1. MATH-L5: the first 200 prompts, all 10 teachers (2,000 responses), all three metrics.
$BIN/python dataset_scripts/take_prompts.py ../shared/data/multiteacher/zeroeval_math_l5.jsonl \
    "$WORK/math_l5_200.jsonl" --prompts 200 --overwrite
# Predict first: 8 timed runs on 96 length-stratified rows of this pool (a point estimate and a 97.5% upper
# bound), and the bench/RESULTS.md engine rates.
$BIN/python bench/predict_time.py "$WORK/math_l5_200.jsonl" --metrics global,local,rsr --return_steps \
    --global_tps 484 --local_tps 191 > "$WORK/math_l5_200.predict.json"
/usr/bin/time -v -o "$WORK/math_l5_200.time" $BIN/hf-localnat score "$WORK/math_l5_200.jsonl" \
    --metrics global,local,rsr --return_steps --output "$WORK/math_l5_200.scored.parquet" --overwrite \
    2> >(tee "$WORK/math_l5_200.score.log" >&2)   # the progress bar's chunk times, for bench/chunk_costs.py
$BIN/hf-localnat report "$WORK/math_l5_200.scored.parquet" --output docs/math_l5_200 --html_steps --overwrite

# 2. ProcessBench (MATH subset): 200 random step-labelled solutions, scored on their own steps.
$BIN/python dataset_scripts/processbench_to_long.py ../shared/data/steplabels/processbench_math.json \
    "$WORK/processbench_math_200.jsonl" --sample 200 --seed 0 --overwrite
$BIN/python bench/predict_time.py "$WORK/processbench_math_200.jsonl" --splitter paragraph --metrics local \
    --return_steps --global_tps 484 --local_tps 191 > "$WORK/processbench_math_200.predict.json"
/usr/bin/time -v -o "$WORK/processbench_math_200.time" $BIN/hf-localnat score "$WORK/processbench_math_200.jsonl" \
    --splitter paragraph --metrics local --return_steps --output "$WORK/processbench_math_200.scored.parquet" \
    --overwrite
$BIN/hf-localnat report "$WORK/processbench_math_200.scored.parquet" --output docs/processbench_math_200 --overwrite

# 3. The tables of docs/findings.md.
$BIN/python docs/findings_tables.py docs/math_l5_200/report.json docs/processbench_math_200/report.json
# Looping responses, and which metric selects them (docs/findings.md, MATH-L5 "Looping responses").
$BIN/python docs/repetition_loops.py "$WORK/math_l5_200.scored.parquet"

# 4. The embedded student itself on two benchmarks (greedy, 512 new tokens; about 8 min each on 2 cores).
for BENCH in gsm8k math500; do
    $BIN/hf-localnat evaluate --benchmark "../shared/data/benchmarks/$BENCH.jsonl" --limit 100 --max_new_tokens 512 \
        --batch_size 8 --output "docs/eval/${BENCH}_100.jsonl" --overwrite
done
