#!/usr/bin/env bash
# The package's GPU paths checked on one GPU in at most 8 minutes, everything it finds written under one folder.
#
#   scripts/gpu_check.sh [OUT]    # OUT: default ${OUT:-gpu-check-out}; GPU_CHECK_BUDGET: seconds in all (480)
#
# Steps, each stopped by `timeout` at its limit (and at what is left of the budget); a failed one does not stop
# the next. OUT/summary.tsv and OUT/summary.md give each step's command, status, exit code and seconds; OUT/logs/
# its whole output. Exit status 1 when a step that ran failed, 0 when all passed or were skipped.
#   env         python, torch, CUDA, the GPUs, the CPU, the data found                    -> env.txt
#   install     pip install -e . offline (--no-index), unless this checkout is installed editable already
#   cuda-tests  pytest -m cuda tests/test_gpu.py: autocast and loss scaling, pinned batches, checkpoints, nccl
#   data        full CIFAR-10 if found (shared/data/cifar10, ../shared/data/cifar10, $CIFAR10_DIR), else the
#               bundled sample repeated to CIFAR-10's size, written as official batches
#   train       cifar-fastai train, 2 epochs, --precision auto, default loader workers   -> train/
#   resume      a run killed (SIGKILL) after a checkpoint inside its epoch, then --resume  -> resume/
#   bench       scripts/bench_speed.py: ours, bare step, loader alone with 0, 4 and 8 workers -> bench_speed.md
#   ddp         torchrun over every GPU (nccl), 1 epoch of the sample; needs 2 GPUs or more
# Without CUDA the same script runs in about 2 minutes: the CUDA tests show their skips, train and resume take the
# bundled sample for 1 epoch, bench and ddp are skipped, and summary.md lists what was skipped for want of CUDA.
# Data and run folders (with their weights) live in a temporary folder, removed at the end: nothing big in OUT.
set -uo pipefail

OUT_DIR=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
export REPO=$PWD OUT_DIR PY=${PYTHON:-python} MPLBACKEND=Agg
BUDGET=${GPU_CHECK_BUDGET:-480}
rm -rf "$OUT_DIR"/{logs,train,resume,ddp} "$OUT_DIR"/{summary.tsv,summary.md,env.txt,bench_speed.md}
mkdir -p "$OUT_DIR/logs"
export WORK; WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
export NOTE=$WORK/note SKIPPED=$WORK/skipped  # a step's one-line note; a step that ran but found nothing to check

export N_GPU; N_GPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' \
                     2>/dev/null) || N_GPU=0
export CLI="cifar-fastai"
command -v cifar-fastai >/dev/null || CLI="$PY -m cifar_fastai.cli"  # what `install` puts on PATH, if it failed
FULL_DATA=
for d in "${CIFAR10_DIR:-}" shared/data/cifar10 ../shared/data/cifar10; do
    if [ -n "$d" ] && { [ -d "$d/train" ] && [ -d "$d/test" ] || [ -f "$d/batches.meta" ]; }; then
        FULL_DATA=$(cd "$d" && pwd); break
    fi
done
export FULL_DATA
# what `data` writes: the sample repeated as official batches, and as PNG class folders for bench_speed.py
TRAIN_DATA=$WORK/sample-x100 BENCH_DATA=$WORK/sample-folders REPEAT=100 COPIES=21
if (( ! N_GPU )); then TRAIN_DATA=$WORK/sample-x1 REPEAT=1 COPIES=1  # never the full data on a CPU
elif [ -n "$FULL_DATA" ]; then
    TRAIN_DATA=$FULL_DATA REPEAT=0
    [ -d "$FULL_DATA/train" ] && BENCH_DATA=$FULL_DATA COPIES=0  # bench_speed.py reads image files, not batches
fi
export TRAIN_DATA BENCH_DATA


################################################################################
#                  Steps: what each runs under `timeout`                       #
################################################################################

check_env() { env_report | sed "s|$WORK|\$WORK|g" | tee "$OUT_DIR/env.txt"; return "${PIPESTATUS[0]}"; }

env_report() {
    local cpu; cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); host $(hostname); $(nproc --all) CPUs: $cpu"
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=index,name,memory.total,driver_version \
        --format=csv,noheader; else echo "nvidia-smi: not found"; fi
    echo "full CIFAR-10: ${FULL_DATA:-not found in \$CIFAR10_DIR, shared/data/cifar10, ../shared/data/cifar10}"
    echo "data of train and resume: $TRAIN_DATA; of bench: $BENCH_DATA"
    echo "command line: $CLI; OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}, niceness $(nice)"
    "$PY" - "$NOTE" <<'EOF'
import importlib.metadata as md, platform, sys
import torch
def version(name):
    try: return md.version(name)
    except md.PackageNotFoundError: return 'not installed'
print(f'python {platform.python_version()} ({sys.executable})')
print(', '.join(f'{n} {version(n)}' for n in ('torch', 'fastai', 'accelerate', 'albumentations', 'numpy', 'pytest')))
cuda = torch.cuda.is_available()
nccl = torch.cuda.nccl.version() if cuda and torch.distributed.is_nccl_available() else 'none'
print(f'torch CUDA build {torch.version.cuda}, available: {cuda}' + (f', cuDNN {torch.backends.cudnn.version()}, '
      f'NCCL {".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl}' if cuda else ''))
gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())] if cuda else []
for i, p in enumerate(gpus): print(f'cuda:{i}: {p.name}, compute capability {p.major}.{p.minor}, '
                                   f'{p.total_memory / 2**30:.0f} GiB')
what = ', '.join(f'{p.name} ({p.major}.{p.minor})' for p in gpus) if gpus else 'no CUDA: CPU only'
open(sys.argv[1], 'w').write(f'torch {torch.__version__}, {what}')
EOF
}

install_package() {
    local where  # where cifar_fastai imports from outside the checkout, where the working directory does not count
    where=$(cd / && "$PY" -c 'import importlib.metadata as md, cifar_fastai
md.version("cifar-fastai"); print(cifar_fastai.__file__)' 2>/dev/null)
    if [ "$where" = "$REPO/cifar_fastai/__init__.py" ] && command -v cifar-fastai >/dev/null; then
        echo "already installed editable from this checkout ($REPO): pip not run" | tee "$NOTE"
    else
        echo "cifar_fastai imports from ${where:-nowhere} outside the checkout: installing it"
        echo "+ $PY -m pip install --no-index --no-build-isolation -e $REPO"
        if ! "$PY" -m pip install --no-index --no-build-isolation -e "$REPO"; then
            echo "pip install failed: offline, every dependency must already be installed; the steps below use" \
                 "whatever cifar_fastai this python imports" | tee "$NOTE"
            return 1
        fi
        echo "installed editable by pip, offline" > "$NOTE"
    fi
    echo "+ cifar-fastai --version"; cifar-fastai --version
}

cuda_tests() {
    "$PY" -m pytest -v -ra -p no:cacheprovider -m cuda tests/test_gpu.py 2>&1 | tee "$WORK/pytest.out"
    local rc=${PIPESTATUS[0]} counts reasons
    counts=$(grep -E '^=+ .* in [0-9.]+s' "$WORK/pytest.out" | tail -n 1 | sed -E 's/=+//g; s/^ +| +$//g')
    if (( ! N_GPU )) && (( rc == 0 )) && [[ $counts != *passed* ]]; then
        reasons=$(sed -n 's/^SKIPPED \[[0-9]*\] [^ ]*: //p' "$WORK/pytest.out" | sort -u | paste -sd ';')
        echo "no CUDA: pytest ran, $counts: $reasons" > "$NOTE"; touch "$SKIPPED"
    else echo "$counts" > "$NOTE"; fi
    return "$rc"
}

write_data() {  # write_data REPEAT COPIES: the bundled sample as official batches x REPEAT, PNG class folders x COPIES
    "$PY" - "$WORK" "$1" "$2" "$NOTE" <<'EOF'
import pickle, sys
from pathlib import Path
import numpy as np
from PIL import Image
from cifar_fastai.data import SAMPLE, read_npz
work, repeat, copies, note = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
data, written = read_npz(SAMPLE), []
batches = work / f'sample-x{repeat}'  # data_batch_1..5, test_batch, batches.meta: the layout `--data` reads
def dump(name, obj):
    with open(batches / name, 'wb') as f: pickle.dump(obj, f, protocol=2)  # protocol 2, as the official files
def rows(x): return x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # a row per image: 1024 red, green, blue values
if repeat:
    batches.mkdir()
    train_x, train_y = np.tile(data.train_x, (repeat, 1, 1, 1)), np.tile(data.train_y, repeat)
    tests = max(1, repeat // 2)  # 10,000 test images from 200, as CIFAR-10's
    test_x, test_y = np.tile(data.test_x, (tests, 1, 1, 1)), np.tile(data.test_y, tests)
    for i, part in enumerate(np.array_split(np.arange(len(train_x)), 5)):
        dump(f'data_batch_{i + 1}', {b'data': rows(train_x[part]), b'labels': train_y[part].tolist()})
    dump('test_batch', {b'data': rows(test_x), b'labels': test_y.tolist()})
    dump('batches.meta', {b'label_names': [c.encode() for c in data.classes]})
    written.append(f'{len(train_x)} train and {len(test_x)} test images as official batches')
# class folders for scripts/bench_speed.py, which reads image files
for split, xs, ys, n in (('train', data.train_x, data.train_y, copies), ('test', data.test_x, data.test_y, 1)):
    for k in range(n):
        for i, (x, y) in enumerate(zip(xs, ys)):
            path = work / 'sample-folders' / split / data.classes[y] / f'{k:02d}-{i:04d}.png'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(path)
if copies: written.append(f'{copies * len(data.train_x)} train images (x {copies}) as PNG class folders')
note.write_text(f"the bundled sample written out: {'; '.join(written)}")
print(note.read_text())
EOF
}

check_run() {  # check_run RC RUN EPOCHS: keep RUN's small files in OUT, check its epochs and device; RC if not 0
    local rc=$1 run=$2 epochs=$3 keep=$OUT_DIR/$(basename "$2") f
    mkdir -p "$keep"
    for f in config.json metrics.csv lr_find.png lr_find.json; do [ -f "$run/$f" ] && cp "$run/$f" "$keep/"; done
    "$PY" - "$run" "$epochs" "$N_GPU" "$NOTE" <<'EOF' || return 1
import csv, json, math, sys
from pathlib import Path
run, epochs, n_gpu, note = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
if not (run / 'metrics.csv').exists(): sys.exit(f'{run} has no metrics.csv: no epoch finished')
config = json.loads((run / 'config.json').read_text())
rows = list(csv.DictReader(open(run / 'metrics.csv')))
problems = []
if [int(r['epoch']) for r in rows] != list(range(1, epochs + 1)):
    problems.append(f"metrics.csv holds epochs {[int(r['epoch']) for r in rows]}, not 1 to {epochs}")
if not all(math.isfinite(float(r[k])) for r in rows for k in ('train_loss', 'test_loss')):
    problems.append('a loss is not finite')
if n_gpu and not config['device'].startswith('cuda'):
    problems.append(f"trained on {config['device']} although CUDA is available")
if not (run / 'model.pth').exists(): problems.append('no model.pth: the run did not end')
last, images, n = rows[-1], config['n_train'], len(rows)
processes = f", {config['processes']} processes" if config['processes'] > 1 else ''
said = (f"{config['device']}{processes}, {config['precision_used']}, {images} train images, {n} epoch"
        f"{'s' * (n > 1)}: test accuracy {float(last['test_accuracy']):.2%}, "
        f"last epoch {float(last['seconds']):.1f} s "
        f"({images / float(last['seconds']):.0f} train images/s with its test pass)")
with open(note, 'a') as f: f.write(said)  # after what the step said before
print(said)
if problems: sys.exit('; '.join(problems))
EOF
    return "$rc"
}

kill_and_resume() {  # kill_and_resume RUN TRAIN-OPTIONS...: the run SIGKILLed inside an epoch, then resumed
    "$PY" - "$@" <<'EOF'
import os, shlex, signal, subprocess, sys, time
from pathlib import Path
from cifar_fastai.callbacks import read_metrics
from cifar_fastai.checkpoint import CHECKPOINT, load_checkpoint
run, options, cli = Path(sys.argv[1]), sys.argv[2:], shlex.split(os.environ['CLI'])
start = [*cli, 'train', *options, '--out', str(run)]
print('+', shlex.join(start), '&', flush=True)
proc, seen = subprocess.Popen(start), None
while proc.poll() is None:  # until a checkpoint inside an epoch: `Checkpoint` writes it whole, then renames it
    stamp = (run / CHECKPOINT).stat().st_mtime_ns if (run / CHECKPOINT).exists() else None
    if stamp is not None and stamp != seen:
        seen = stamp
        if load_checkpoint(run)['partial']: break
    time.sleep(0.2)
if proc.poll() is not None: sys.exit(f'the run ended (exit {proc.returncode}) before a checkpoint inside an epoch')
proc.kill(); proc.wait()
state = load_checkpoint(run)
if not state['partial']: sys.exit(f"killed too late: the checkpoint holds epoch {state['epoch']} whole")
epoch, batch = state['epoch'] + 1, state['partial']['batch']
print(f'killed with SIGKILL; its checkpoint holds {epoch - 1} epochs and {batch} batches of epoch {epoch}', flush=True)
resume = [*cli, 'train', '--resume', str(run)]
print('+', shlex.join(resume), flush=True)
if (rc := subprocess.run(resume).returncode): sys.exit(f'the resumed run failed with exit code {rc}')
rows, state, leftovers = read_metrics(run / 'metrics.csv'), load_checkpoint(run), list(run.glob('.*.tmp'))
if state['partial'] or leftovers:
    sys.exit(f"after the resume: a checkpoint inside an epoch ({state['partial']}) or half-written files {leftovers}")
print(f"resumed to the end: epochs {[r['epoch'] for r in rows]}", flush=True)
Path(os.environ['NOTE']).write_text(f'killed inside epoch {epoch} after batch {batch}, resumed from there; ')
EOF
}

bench() {  # bench DATA: bench_speed.py, on the GPU if it can be told to, else on this machine's CPU
    local device=() where="this machine's CPU: bench_speed.py has no --device option; ours on the GPU: see train"
    if "$PY" scripts/bench_speed.py --help | grep -q -- '--device'; then device=(--device cuda) where="cuda"; fi
    echo "+ $PY scripts/bench_speed.py --quick --data $1 --loader-workers 0 ${device[*]}"
    "$PY" scripts/bench_speed.py --quick --data "$1" --loader-workers 0 "${device[@]}" | tee "$WORK/speed.out"
    local rc=${PIPESTATUS[0]}
    local loader=(--loader-only --n-images 10240 --rounds 2 --data "$1" --loader-workers 0 4 8 "${device[@]}")
    echo "+ $PY scripts/bench_speed.py ${loader[*]}"
    "$PY" scripts/bench_speed.py "${loader[@]}" | tee "$WORK/loader.out"
    local loader_rc=${PIPESTATUS[0]}
    (( rc )) || rc=$loader_rc
    for f in speed loader; do sed -n '/^### /,$p' "$WORK/$f.out"; echo; done > "$OUT_DIR/bench_speed.md"
    echo "contenders on $where; tables in bench_speed.md" > "$NOTE"
    return "$rc"
}

export -f check_env env_report install_package cuda_tests write_data check_run kill_and_resume bench


################################################################################
#                  Running them: limits, budget, the summary                   #
################################################################################

printf 'step\tstatus\texit_code\tseconds\tlimit_s\tcommand\tnote\n' > "$OUT_DIR/summary.tsv"
N_STEP=0 FAILED=0

record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$OUT_DIR/summary.tsv"; }
shown() {  # the shell line $1 on one line, temporary paths as $WORK, the checkout's relative to it
    local c=${1//$WORK/\$WORK}
    echo "${c//$REPO\//}" | tr '\n' ' ' | tr -s ' ' | sed 's/ $//'
}

step() {  # step NAME LIMIT COMMAND: run the shell line COMMAND under `timeout`, its output in logs/NN-NAME.log
    local name=$1 limit=$2 command=$3 left=$((BUDGET - SECONDS)) log start rc status note
    N_STEP=$((N_STEP + 1)); log=$OUT_DIR/logs/$(printf %02d "$N_STEP")-$name.log
    (( limit > left )) && limit=$left
    if (( left < 10 )); then
        record "$name" 'NOT RUN' - 0 "$limit" "$(shown "$command")" "the budget of $BUDGET s is spent"
        FAILED=1; return
    fi
    echo "== $name, at most $limit s: $(shown "$command")"
    rm -f "$NOTE" "$SKIPPED"
    printf '$ %s\n' "$(shown "$command")" > "$log"
    start=$SECONDS
    timeout -k 10 "$limit" bash -c "$command" >> "$log" 2>&1; rc=$?
    note=$(cat "$NOTE" 2>/dev/null | tr '\t\n' '  ' | sed 's/ *$//')
    if (( rc == 124 || rc == 137 )); then status=TIMEOUT note="stopped at its limit of $limit s${note:+; $note}"
    elif (( rc )); then status=FAIL note="${note:+$note; }$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-200)"
    elif [ -e "$SKIPPED" ]; then status=skip
    else status=ok; fi
    [ "$status" = ok ] || [ "$status" = skip ] || FAILED=1
    record "$name" "$status" "$rc" $((SECONDS - start)) "$limit" "$(shown "$command")" "$(shown "$note")"
    sed -i "s|$WORK|\$WORK|g" "$log"
    echo "   $status after $((SECONDS - start)) s: $(shown "$note")"
}

skip() {  # skip NAME COMMAND REASON: a step not run here
    N_STEP=$((N_STEP + 1))
    printf '$ %s\nskipped: %s\n' "$(shown "$2")" "$3" > "$OUT_DIR/logs/$(printf %02d "$N_STEP")-$1.log"
    record "$1" skip - 0 - "$(shown "$2")" "$3"
    echo "== $1: skipped, $3"
}

step env 30 check_env
step install 120 install_package
step cuda-tests 150 cuda_tests
if (( REPEAT || COPIES )); then step data 60 "write_data $REPEAT $COPIES"
else skip data "write_data 0 0" "full CIFAR-10 found at $FULL_DATA"; fi
if (( N_GPU )); then
    step train 240 "$CLI train --data $TRAIN_DATA --epochs 2 --precision auto --no-interpret --out $WORK/train;
                    check_run \$? $WORK/train 2"
    step resume 150 "kill_and_resume $WORK/resume --data $TRAIN_DATA --epochs 1 --lr 0.02 --save-every 1 \
                     --precision auto --no-interpret && check_run 0 $WORK/resume 1"
    step bench 150 "bench $BENCH_DATA"
else
    # the bundled sample, 1 epoch, at a fixed rate: no range test
    step train 150 "$CLI train --data $TRAIN_DATA --epochs 1 --lr 0.02 --precision auto --no-interpret \
                    --out $WORK/train; check_run \$? $WORK/train 1"
    step resume 150 "kill_and_resume $WORK/resume --data $TRAIN_DATA --epochs 1 --bs 32 --lr 0.02 --save-every 1 \
                     --precision auto --no-interpret && check_run 0 $WORK/resume 1"
    skip bench "bench $BENCH_DATA" "no CUDA: its numbers belong to the GPU machine (a CPU's: BENCHMARKS.md)"
fi
DDP="$PY -m torch.distributed.run --standalone --nproc_per_node gpu -m cifar_fastai.cli train --data sample \
     --epochs 1 --bs 50 --lr 0.02 --sync-bn --no-interpret --out $WORK/ddp; check_run \$? $WORK/ddp 1"
if (( N_GPU >= 2 )); then step ddp 120 "$DDP"
elif (( N_GPU )); then skip ddp "$DDP" "one GPU: NCCL refuses two ranks on one device; tests/test_gpu.py runs one"
else skip ddp "$DDP" "no CUDA: nccl needs GPUs (gloo on CPU processes: tests/test_distributed.py)"; fi


write_summary() {
    local cuda_skips
    {
        echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "$(sed -n 2p "$OUT_DIR/summary.tsv" | cut -f7); $(nproc --all) CPUs," \
             "OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}. \`scripts/gpu_check.sh\`, budget" \
             "$BUDGET s, used $SECONDS s. Result: $([ "$FAILED" = 0 ] && echo 'every step that ran passed' \
             || echo 'FAILED, see the steps marked FAIL, TIMEOUT or NOT RUN and their logs')."
        echo
        echo '| step | status | exit | s | limit s | command | note |'
        echo '|---|---|---:|---:|---:|---|---|'
        tail -n +2 "$OUT_DIR/summary.tsv" | while IFS=$'\t' read -r name status rc sec limit command note; do
            echo "| $name | $status | $rc | $sec | $limit | \`${command//|/\\|}\` | ${note//|/\\|} |"
        done
        cuda_skips=$(awk -F'\t' '$2 == "skip" && $7 ~ /^no CUDA/ {printf "%s%s", sep, $1; sep = ", "}' \
                     "$OUT_DIR/summary.tsv")
        echo
        if [ -n "$cuda_skips" ]; then echo "Skipped for want of CUDA: $cuda_skips. Run this script on a GPU for them."
        else echo "Nothing was skipped for want of CUDA."; fi
        echo
        echo "\$WORK is a temporary folder, removed at the end: the data written and the run folders with their"
        echo "weights. Kept here: env.txt, logs/ (each step's whole output), train/ and resume/ (config.json,"
        echo "metrics.csv), bench_speed.md when bench ran. check_run: the run's epochs all in metrics.csv with"
        echo "finite losses, model.pth written, and a CUDA device in config.json wherever CUDA is available."
        echo "kill_and_resume: starts \`cifar-fastai train\` with the options given, SIGKILLs it once checkpoint.pth"
        echo "holds a checkpoint inside an epoch, runs \`cifar-fastai train --resume\`, checks it ends whole."
    } > "$OUT_DIR/summary.md"
}

write_summary
echo; cat "$OUT_DIR/summary.md"
exit "$FAILED"
