#!/usr/bin/env bash
# The headline results with 3 seeds each (docs/statistics.md): Table 2, Figure 2 (TopK, RandK, TopK+GRPO,
# topk_matched, Rand-all) and the closed loop, then the report with mean ± 95% CI per cell and the generated
# claims table. Only `seed` varies: the pretrained base, R_φ^0 and the candidate pool keep their own seeds
# (seeds.base / seeds.reward / seeds.pool) and are built once and shared by every job, as the claims compare
# arms on the same pool and reward model.
#
# Measured 2026-12-03 (commit a785399, 2 cores shared with other work most of the time, two jobs at a time):
# shared products 3.0 min (pool and R_φ^0 cached; the base and the default R_φ^0 ship with the repository),
# Table 2 (12 jobs) 20.4 min, the loop (3 jobs in parallel) 8.6 min, Figure 2 TopK/RandK (24 jobs) 31.5 min,
# Rand-all (3) 5.6 min, TopK matched K=1,000/2,000 (6) 8.9 min, TopK+GRPO (12) 23.8 min, TopK matched
# K=4,000/8,000 (6) see docs/statistics.md: about 1 h 55 min of wall time for the 69 jobs.
#   bash experiments/reproduce_seeds.sh                 # everything
#   SEEDS=1,2 STEPS="fig2" bash experiments/reproduce_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-experiments/results}
SEEDS=${SEEDS:-0,1,2}
PAR="hydra/launcher=joblib hydra.launcher.n_jobs=2 cpu_threads=1"
STEPS=${STEPS:-"shared table2 fig2 loop report"}

step() { [[ " $STEPS " == *" $1 "* ]]; }
say() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

if step shared; then say "shared products first (base, R_phi^0, pool): parallel jobs must not build them twice"
  $PY train.py experiment=topk k=1000 seed=0 cpu_threads=1
fi
if step table2; then say "Table 2 x seeds $SEEDS"
  time $PY train.py -m $PAR experiment=zero_shot,sft_raw,sft_rewarded,grpo seed=$SEEDS
fi
if step fig2; then say "Figure 2 x seeds $SEEDS"
  time $PY train.py -m $PAR experiment=topk,randk,topk_grpo,topk_matched k=1000,2000,4000,8000 seed=$SEEDS
  time $PY train.py -m $PAR experiment=rand_all seed=$SEEDS
fi
if step loop; then say "the closed loop (T=2) x seeds $SEEDS"
  time $PY train.py -m $PAR seed=$SEEDS   # R_phi^0 of the default config ships with the repository
fi
if step report; then say "tables, figures and the claims table from MLflow -> $OUT"
  $PY -m medgr2.report --out "$OUT"
  $PY -m medgr2.report --compare 'randk k=2000' 'topk_matched k=2000'
fi
