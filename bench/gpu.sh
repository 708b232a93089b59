#!/usr/bin/env bash
# The whole GPU benchmark suite in one call: VGG16 (D) at 224, batch 256, bf16, ours vs the
# torchvision reference measured in the same run.
#
#   bash bench/gpu.sh [OUTDIR]        (default: $OUT if set, else bench-results/)
#
# Writes OUTDIR/gpu.md (one markdown table per section), OUTDIR/<section>.json and
# OUTDIR/gpu.log. Sections (SECTIONS="train e2e eval data" by default; set it to run a subset,
# e.g. to split the suite over calls shorter than ten minutes):
#   train  synthetic-tensor training step: reference, ours as the loop ships, and the changes
#          the loop might adopt (nosync+slices, fused optimiser, torch.compile, CUDA graphs)
#   e2e    JPEGs from disk with the paper's scale jittering S in [256, 512]: our loader + step
#          vs ImageFolder + PIL transforms + DataLoader + the plain loop
#   eval   centre, dense and multi-crop evaluation at Q = 256, 384, 512
#   data   the data pipeline alone (images/s per worker, ours vs torchvision)
# Needs only torch, torchvision and Pillow: the package is used from this checkout through
# PYTHONPATH, nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-bench-results}}"
SECTIONS="${SECTIONS:-train e2e eval data}"
PY="${PYTHON:-python3}"
JPEGS="${JPEGS:-/tmp/verydeep-bench-jpegs}"
WORKERS="${WORKERS:-$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))}"
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUTDIR/gpu.log"
MD="$OUTDIR/gpu.md"

"$PY" - <<'PY' 2>&1 | tee "$LOG"
import torch, torchvision
assert torch.cuda.is_available(), "bench/gpu.sh needs a CUDA device"
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {p.name}, "
      f"{p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
{ echo "# GPU benchmarks ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"; echo; } > "$MD"

status=0
section() {  # section NAME TITLE ARGS...
  local name=$1 title=$2; shift 2
  echo "== $name: verydeep bench $*" | tee -a "$LOG"
  if "$PY" -m verydeep bench "$@" --preset paper --json "$OUTDIR/$name.json" --markdown "$OUTDIR/$name.md" \
       >>"$LOG" 2>&1; then
    { echo "## $title"; echo; echo "Command: \`verydeep bench $* --preset paper\`"; echo;
      cat "$OUTDIR/$name.md"; echo; } >> "$MD"
  else
    status=1
    { echo "## $title"; echo; echo "FAILED: \`verydeep bench $*\` (see gpu.log)"; echo; } >> "$MD"
  fi
  rm -f "$OUTDIR/$name.md"
  tail -n 20 "$LOG"
}

for s in $SECTIONS; do
  case $s in
    train) section train "Training step, synthetic tensors (VGG16, 224, batch 256, bf16)" train \
             --variants reference,ours,ours+nosync+slices,ours+fused+nosync+slices,ours+compile+nosync+slices,ours+graphs+fused ;;
    e2e)   section e2e "End to end from JPEG files, S in [256, 512] (VGG16, batch 256, bf16, $WORKERS workers)" e2e \
             --data-dir "$JPEGS/e2e" --workers "$WORKERS" ;;
    eval)  section eval "Evaluation: centre, dense, multi-crop at Q = 256, 384, 512 (VGG16, bf16)" eval ;;
    data)  section data "Data pipeline alone (images/s per worker)" data --data-dir "$JPEGS/data" ;;
    *) echo "unknown section $s" | tee -a "$LOG"; status=1 ;;
  esac
done
cat "$MD"
exit $status
