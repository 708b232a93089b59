#!/usr/bin/env bash
# The GPU check in one call: VGG16 (D) at 224, batch 256, bf16, ours against the references
# measured in the same run, and the GPU data path checked against the CPU path.
#
#   bash bench/gpu.sh OUTDIR [--quick] [--no-extras]
#     (no --quick)  the GPU machine (one CUDA device): the paper's sizes, windows of >= 5 s
#     --quick       any machine, CPU, tiny sizes, windows of >= 0.2 s: proves the script runs
#                   (its figures are no measurement; gpu.md says so)
#     --no-extras   leave out the optional sections (data, parallel) even with time left
# Options may come in any order; anything else is an error (exit 2).
#
# Runs with the machine's own python3 (PYTHON=... to choose another) and the package from this
# checkout through PYTHONPATH: nothing is installed. Needs torch, torchvision, numpy, Pillow,
# PyYAML; timm is used where installed (the stronger reference's loader).
#
# Sections, in the order of what the figures are worth, each under its own `timeout` (seconds,
# GPU / --quick), all within BUDGET seconds (default 570 / 600): a section starts with the
# smaller of its timeout and the time left and is skipped with under 10 s left. The optional
# sections (data: a CPU figure; parallel: two ranks on one GPU over gloo) run last, and only
# with their whole timeout left. Every section writes its JSON rows as they are measured, so a
# time-out keeps what it had ("complete": false in the file).
#   env       20/60   versions, GPU, driver, CPU -> env.json
#   jpegs     45/60   ImageNet-like JPEGs (~110 KB, 500x375), generated in parallel, outside OUTDIR
#   train    120/90   training step, synthetic tensors, TF32 alike: reference, reference+timm (the
#                     headline), ours, ours without channels_last, ours in a CUDA graph; a
#                     10-step torch.profiler summary per variant (convolutions, matmuls,
#                     elementwise, copies, optimiser); the headline reference again at the end
#   e2e      150/120  end to end from JPEGs: reference (ImageFolder + RandomResizedCrop),
#                     reference+timm, reference+timm+jitter (our transform: the headline), ours
#                     (S in [256, 512]), ours with data.decode=gpu; non-finite losses counted
#   compile  100/150  ours vs ours+compile (a first compile can take a minute or two; --quick:
#                     the aot_eager backend, which traces the step but builds no kernels)
#   eval      90/60   centre, dense, multi-crop at Q = 256, 384, 512, ours and reference
#   gpucheck  60/60   GPU data path vs CPU path while training kernels are queued: labels,
#                     pixel differences (fails beyond resampling tolerance), images/s
#   data      45/90   (optional) the data pipeline alone, images/s per worker, rounds' spread
#   parallel  80/150  (optional) a few steps of each parallel mode (1 and 2 ranks, gloo)
# Writes under OUTDIR: gpu.md (summary: versions, sections, tables, targets), <section>.json,
# sections.tsv, gpu.log. Exit status 0 when every section that ran passed.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
EXTRAS=1
OUTDIR=""
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --no-extras) EXTRAS=0 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "bench/gpu.sh: unknown option $arg (known: --quick, --no-extras, --help)" >&2; exit 2 ;;
    *) if [ -n "$OUTDIR" ]; then echo "bench/gpu.sh: one OUTDIR, got '$OUTDIR' and '$arg'" >&2; exit 2; fi
       OUTDIR=$arg ;;
  esac
done
OUTDIR="${OUTDIR:-${OUT:-bench-results}}"
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
echo "$QUICK" > "$OUTDIR/quick"
START=$(date +%s)

if [ $QUICK = 1 ]; then
  BUDGET="${BUDGET:-600}"
  declare -A CAP=([env]=60 [jpegs]=60 [train]=90 [e2e]=120 [compile]=150 [eval]=60 [gpucheck]=60 [data]=90
                  [parallel]=150)
else
  BUDGET="${BUDGET:-570}"
  declare -A CAP=([env]=20 [jpegs]=45 [train]=120 [e2e]=150 [compile]=100 [eval]=90 [gpucheck]=60 [data]=45
                  [parallel]=80)
fi
OPTIONAL=" data parallel "
SECTIONS="${SECTIONS:-env jpegs train e2e compile eval gpucheck data parallel}"
status=0

section() {  # section NAME COMMAND...: run under the smaller of its timeout and the time left
  local name=$1; shift
  local left=$(( START + BUDGET - $(date +%s) ))
  local limit=$(( ${CAP[$name]} < left ? ${CAP[$name]} : left ))
  if [[ $OPTIONAL == *" $name "* ]] && { [ $EXTRAS = 0 ] || [ "$left" -lt "${CAP[$name]}" ]; }; then
    printf '%s\tskipped (optional): %ss left\t0\t%s\n' "$name" "$left" "${CAP[$name]}" >> "$TSV"
    echo "== $name: optional, skipped (${left}s left of ${BUDGET}s)" | tee -a "$LOG"
    return
  fi
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
  TRAIN=(train "${DEV[@]}" --steps 2 --warmup 1 --repeats 2 --min-seconds 0.2 --profile 2)
  TRAIN_VARIANTS=reference,reference+timm,ours,ours+nocl
  E2E=(e2e "${DEV[@]}" --images $E2E_FILES --classes 2 --batch-size 4 --workers 1 --steps 3 --repeats 2
       --min-seconds 0.2 --crop-size 64 --scale-min 72 --scale-max 96)
  # the compile path traced, no kernels built: inductor's C++ build took 4.5 min on the loaded 2-core CPU
  COMPILE=(train "${DEV[@]}" --model vgg11 --crop-size 32 --batch-size 4 --steps 2 --warmup 1 --repeats 1
           --compile-backend aot_eager --variants ours,ours+compile)
  EVAL=(eval "${DEV[@]}" --crop-size 32 --scales 48,64 --batch-size 1 --steps 1 --warmup 0 --repeats 1)
  CHECK=(--device cpu --batch-size 8 --crop-size 64 --scale-min 72 --scale-max 96 --no-draft)  # S < 375/2: like for like
  DATA=(data --images $DATA_FILES --repeats 2 --batch-size 8 --crop-size 64 --scale-min 72 --scale-max 96)
  PARALLEL=(parallel --device cpu --width 0.0625 --crop-size 32 --batch-size 8 --steps 2 --timeout 60)
else
  E2E_FILES=4096; DATA_FILES=400
  TRAIN=(train --preset paper --steps 15 --warmup 5 --repeats 2)  # the preset: windows >= 5 s, 10-step profile
  TRAIN_VARIANTS=reference,reference+timm,ours,ours+nocl,ours+graphs
  E2E=(e2e --preset paper --workers "$WORKERS" --images $E2E_FILES --classes 16)
  COMPILE=(train --preset paper --steps 15 --warmup 5 --repeats 1 --profile 0 --variants ours,ours+compile)
  EVAL=(eval --preset paper --steps 5 --warmup 2)
  CHECK=(--device cuda --batch-size 128 --no-draft)  # like for like: the tolerance is judged
  DATA=(data --images $DATA_FILES --repeats 3)
  PARALLEL=(parallel --device cuda --amp bf16 --steps 5 --timeout 25)
fi

for s in $SECTIONS; do
  case $s in
    env)      section env "$PY" - "$OUTDIR/env.json" "$QUICK" <<'PY'
import json, os, platform, subprocess, sys
import PIL, numpy, torch, torchvision
quick = sys.argv[2] == "1"
env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
       "numpy": numpy.__version__, "pillow": PIL.__version__, "cuda": torch.version.cuda,
       "cudnn": torch.backends.cudnn.version(), "cpu_cores": os.cpu_count(), "quick": quick}
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
    e2e)      section e2e "${BENCH[@]}" "${E2E[@]}" --data "$JPEGS/e2e" --json "$OUTDIR/e2e.json" ;;
    compile)  section compile "${BENCH[@]}" "${COMPILE[@]}" --json "$OUTDIR/compile.json" ;;
    eval)     section eval "${BENCH[@]}" "${EVAL[@]}" --json "$OUTDIR/eval.json" ;;
    gpucheck) section gpucheck "$PY" -m verydeep.bench.gpu_data_check --data "$JPEGS/e2e" "${CHECK[@]}" \
                --json "$OUTDIR/gpucheck.json" ;;
    data)     section data "${BENCH[@]}" "${DATA[@]}" --data "$JPEGS/data" --json "$OUTDIR/data.json" ;;
    parallel) section parallel "${BENCH[@]}" "${PARALLEL[@]}" --json "$OUTDIR/parallel.json" ;;
    *) echo "unknown section $s" | tee -a "$LOG"; status=1 ;;
  esac
done

"$PY" -m verydeep.bench.gpu_summary "$OUTDIR" || status=1
echo "total $(( $(date +%s) - START ))s of ${BUDGET}s; results in $OUTDIR" | tee -a "$LOG"
exit $status
