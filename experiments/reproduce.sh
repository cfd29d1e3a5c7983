#!/usr/bin/env bash
# Rebuilds every result the README reports on the embedded default (tiny VLM, SynthMed, simulated generator),
# in the order the products depend on each other, then the report. Runs on CPU; on 2 cores it takes about an
# hour and a half, plus ~15 minutes for the pretrained base the first time (the steps print their own progress). Each command is an ordinary `python train.py ...` you can
# also run alone; finished products are cached (.cache/medgr2/) and reused, so a rerun skips what exists.
#
#   bash experiments/reproduce.sh            # everything
#   STEPS="base sft reward" bash experiments/reproduce.sh   # a subset, by step name (see below)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-experiments/results}
# Two jobs at a time, one torch thread each (two threads per job on two shared cores is slower, README).
PAR="hydra/launcher=joblib hydra.launcher.n_jobs=2 cpu_threads=1"
STEPS=${STEPS:-"base sft reward loop table2 pool fig2 fig4 report"}

step() { [[ " $STEPS " == *" $1 "* ]]; }
say() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

if step base; then say "the pretrained base (cached; ~20 min on one thread)"
  $PY train.py stage=pretrain cpu_threads=1
fi
if step sft; then say "SFT per question type, with and without a rationale"
  $PY train.py -m $PAR experiment=sft_think,sft_raw
fi
if step reward; then say "R_phi^0 on the four-grade data"
  $PY train.py stage=reward cpu_threads=1
fi
if step loop; then say "the closed loop, T=2, alone on the machine (timed)"
  time $PY train.py
fi
if step table2; then say "Table 2: base -> SFT raw -> SFT rewarded -> +GRPO"
  $PY train.py -m $PAR experiment=zero_shot,sft_raw,sft_rewarded,grpo
fi
if step pool; then say "the shared 11,000-image candidate pool and its scores (built once, used by every K)"
  $PY train.py experiment=topk k=1000 cpu_threads=1
fi
if step fig2; then say "Figure 2: TopK / RandK / TopK+GRPO / stratified TopK variants at K = 1k..8k, and Rand-all"
  $PY train.py -m $PAR experiment=topk,randk,topk_grpo,topk_stratified,topk_balanced,topk_matched k=1000,2000,4000,8000
  $PY train.py -m $PAR experiment=topk_grpo_match_train,topk_grpo_match k=1000,2000,4000,8000   # ~35 min
  $PY train.py experiment=rand_all cpu_threads=1
fi
if step fig4; then say "Figure 4: cross-modality and cross-task transfer"
  $PY train.py -m $PAR experiment=cross_modality source=CT,MRI,X-Ray,US,Der,FP,OCT,Micro
  $PY train.py -m $PAR experiment=cross_task source=modality,anatomy,diagnosis,grading,other
fi
if step report; then say "tables and figures from MLflow -> $OUT"
  $PY -m medgr2.report --out "$OUT"
  # R_φ^0: the cached reward model of generation 0 (later generations are the loop's adaptations)
  RM0=$($PY -c "import glob, json; print(next(d for d in sorted(glob.glob('.cache/medgr2/reward/rm-*'))
    if json.load(open(d + '/reward_head.json'))['lineage']['generation'] == 0))")
  $PY -m medgr2.pipeline.reward_scores --model "$RM0" --out "$OUT"
  $PY -m medgr2.report.reward_figure --scores "$OUT/reward_scores.csv"
fi
