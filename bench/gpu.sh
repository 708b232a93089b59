#!/usr/bin/env bash
# The GPU check in one call: VGG16 (D) at 224, batch 256, bf16, ours against the references
# measured in the same run, and the GPU data path checked against the CPU path.
#
#   bash bench/gpu.sh OUTDIR            the GPU machine (one CUDA device)
#   bash bench/gpu.sh --quick OUTDIR    any machine, CPU, tiny sizes: proves the script runs
#
# Runs with the machine's own python3 (PYTHON=... to choose another) and the package from this
# checkout through PYTHONPATH: nothing is installed. Needs torch, torchvision, numpy, Pillow,
# PyYAML; timm is used where installed (the stronger reference's loader).
#
# Sections, in this order, each under its own `timeout` (seconds, GPU / --quick), and all of
# them within BUDGET seconds (default 480 / 420): a section starts with the smaller of its
# timeout and the time left, and is skipped with under 10 s left, so a slow section (a hung
# loader, a first torch.compile) cannot starve the others. torch.compile runs last.
#   env       20/20   versions, GPU, driver, CPU -> env.json
#   jpegs     60/60   ImageNet-like JPEGs (~110 KB, 500x375), generated in parallel, outside OUTDIR
#   train    100/60   training step, synthetic tensors: reference, reference+timm, ours, and ours
#                     without channels_last / with foreach SGD / without the non-finite guard /
#                     in a CUDA graph -> images/s, TFLOP/s, share of the 8,500 img/s bound, memory
#   e2e      110/90   end to end from JPEGs, sustained windows: reference (ImageFolder + RRC),
#                     reference+timm, ours (S in [256, 512]), ours with data.decode=gpu
#   gpucheck  45/40   GPU data path vs CPU path: labels, pixel differences, device decode images/s
#   eval      80/40   centre, dense, multi-crop at Q = 256, 384, 512, ours and reference
#   parallel  80/90   a few steps of each parallel mode (1 and 2 ranks on the one GPU, gloo)
#   data      45/40   the data pipeline alone, images/s per worker, median of rounds
#   compile 150/150  ours vs ours+compile (last: a first compile can take minutes)
# Writes under OUTDIR: gpu.md (summary: versions, sections, tables, targets), <section>.json,
# sections.tsv, gpu.log. Exit status 0 when every section passed.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
OUTDIR="${1:-${OUT:-bench-results}}"
mkdir -p "$OUTDIR" && OUTDIR="$(cd "$OUTDIR" && pwd)"
PY="${PYTHON:-python3}"
JPEGS="${JPEGS:-${TMPDIR:-/tmp}/verydeep-bench-jpegs$([ $QUICK = 1 ] && echo -quick)}"
CORES="$(nproc)"
WORKERS="${WORKERS:-$(( CORES > 1 ? CORES - 1 : 1 ))}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUTDIR/gpu.log"
TSV="$OUTDIR/sections.tsv"
: > "$LOG"
: > "$TSV"
START=$(date +%s)

if [ $QUICK = 1 ]; then
  BUDGET="${BUDGET:-420}"
  declare -A CAP=([env]=20 [jpegs]=60 [train]=60 [e2e]=90 [gpucheck]=40 [eval]=40 [parallel]=90 [data]=40 [compile]=150)
else
  BUDGET="${BUDGET:-480}"
  declare -A CAP=([env]=20 [jpegs]=60 [train]=100 [e2e]=110 [gpucheck]=45 [eval]=80 [parallel]=80 [data]=45 [compile]=150)
fi
SECTIONS="${SECTIONS:-env jpegs train e2e gpucheck eval parallel data compile}"
status=0

section() {  # section NAME COMMAND...: run under the smaller of its timeout and the time left
  local name=$1; shift
  local left=$(( START + BUDGET - $(date +%s) ))
  local limit=$(( ${CAP[$name]} < left ? ${CAP[$name]} : left ))
  if [ "$limit" -lt 10 ]; then
    printf '%s\tskipped: out of time\t0\t%s\n' "$name" "${CAP[$name]}" >> "$TSV"
    echo "== $name: skipped, ${left}s left of ${BUDGET}s" | tee -a "$LOG"
    status=1
    return
  fi
  echo "== $name (timeout ${limit}s): $*" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$? outcome=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then outcome="timed out"; elif [ $rc -ne 0 ]; then outcome="failed (exit $rc)"; fi
  [ "$outcome" = ok ] || status=1
  printf '%s\t%s\t%s\t%s\n' "$name" "$outcome" "$(( $(date +%s) - t0 ))" "$limit" >> "$TSV"
  echo "== $name: $outcome in $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
}

BENCH=("$PY" -m verydeep bench)

if [ $QUICK = 1 ]; then
  DEV=(--device cpu --threads 1)
  E2E_FILES=24; DATA_FILES=16
  TRAIN=(train "${DEV[@]}" --steps 2 --warmup 1 --repeats 2)
  TRAIN_VARIANTS=reference,reference+timm,ours,ours+nocl,ours+foreach,ours+nosync
  E2E=(e2e "${DEV[@]}" --images $E2E_FILES --classes 2 --batch-size 4 --workers 1 --steps 3 --repeats 2
       --crop-size 64 --scale-min 72 --scale-max 96)
  CHECK=(--device cpu --batch-size 8 --crop 64 --scale-min 72 --scale-max 96 --no-draft)  # S < 375/2: like for like
  EVAL=(eval "${DEV[@]}" --crop-size 32 --scales 48,64 --batch-size 1 --steps 1 --warmup 0 --repeats 1)
  PARALLEL=(parallel --device cpu --width 0.0625 --crop 32 --batch-size 8 --steps 2 --timeout 40)
  DATA=(data --images $DATA_FILES --repeats 1 --batch-size 8 --crop-size 64 --scale-min 72 --scale-max 96)
  COMPILE=(train "${DEV[@]}" --steps 2 --warmup 1 --repeats 1 --variants ours,ours+compile)
else
  E2E_FILES=4096; DATA_FILES=400
  TRAIN=(train --preset paper --steps 15 --warmup 5 --repeats 3)
  TRAIN_VARIANTS=reference,reference+timm,ours,ours+nocl,ours+foreach,ours+nosync,ours+graphs
  E2E=(e2e --preset paper --workers "$WORKERS" --images $E2E_FILES --classes 16)
  CHECK=(--device cuda --batch-size 128)
  EVAL=(eval --preset paper --steps 5 --warmup 2 --repeats 3)
  PARALLEL=(parallel --device cuda --amp bf16 --steps 5 --timeout 25)
  DATA=(data --images $DATA_FILES --repeats 3)
  COMPILE=(train --preset paper --steps 15 --warmup 5 --repeats 2 --variants ours,ours+compile)
fi

for s in $SECTIONS; do
  case $s in
    env)      section env "$PY" - "$OUTDIR/env.json" "$QUICK" <<'PY'
import json, os, platform, subprocess, sys
import PIL, numpy, torch, torchvision
quick = sys.argv[2] == "1"
env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
       "numpy": numpy.__version__, "pillow": PIL.__version__, "cuda": torch.version.cuda,
       "cudnn": torch.backends.cudnn.version(), "cpu_cores": os.cpu_count()}
try:
    import timm
    env["timm"] = timm.__version__
except ImportError:
    env["timm"] = "not installed"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30), sms=p.multi_processor_count)
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
elif not quick:
    sys.exit("bench/gpu.sh needs a CUDA device (--quick runs on the CPU)")
print(json.dumps(env, indent=2))
open(sys.argv[1], "w").write(json.dumps(env, indent=2) + "\n")
PY
              ;;
    jpegs)    section jpegs "$PY" -c "from verydeep.bench.jpeg_files import write_jpeg_files as w
w('$JPEGS/e2e', n=$E2E_FILES, classes=16 if $E2E_FILES > 100 else 2)
w('$JPEGS/data', n=$DATA_FILES)" ;;
    train)    section train "${BENCH[@]}" "${TRAIN[@]}" --variants "$TRAIN_VARIANTS" --json "$OUTDIR/train.json" ;;
    e2e)      section e2e "${BENCH[@]}" "${E2E[@]}" --data-dir "$JPEGS/e2e" --json "$OUTDIR/e2e.json" ;;
    gpucheck) section gpucheck "$PY" -m verydeep.bench.gpu_data_check --data-dir "$JPEGS/e2e" "${CHECK[@]}" \
                --json "$OUTDIR/gpucheck.json" ;;
    eval)     section eval "${BENCH[@]}" "${EVAL[@]}" --json "$OUTDIR/eval.json" ;;
    parallel) section parallel "${BENCH[@]}" "${PARALLEL[@]}" --json "$OUTDIR/parallel.json" ;;
    data)     section data "${BENCH[@]}" "${DATA[@]}" --data-dir "$JPEGS/data" --json "$OUTDIR/data.json" ;;
    compile)  section compile "${BENCH[@]}" "${COMPILE[@]}" --json "$OUTDIR/compile.json" ;;
    *) echo "unknown section $s" | tee -a "$LOG"; status=1 ;;
  esac
done

"$PY" -m verydeep.bench.gpu_summary "$OUTDIR" || status=1
echo "total $(( $(date +%s) - START ))s of ${BUDGET}s; results in $OUTDIR" | tee -a "$LOG"
exit $status
