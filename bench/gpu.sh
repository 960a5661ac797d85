#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md: the gpu-marked tests and the benchmarks, each step under its
# own time limit, each step's output kept in LOG_DIR/<step>.log.
#   bench/gpu.sh LOG_DIR tests throughput           # the steps to run, in order
# Steps: tests throughput effnet heavy packing naive gap graphs pagelock pagegraphs profile gpuaug effgpu ops quality
set -u
log=${1:?LOG_DIR}; shift
mkdir -p "$log"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
photos=(--images 1920)  # 6 x 320 photos, shared by throughput and packing (repeated to 60-120 batches an epoch)

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "== $name ($(date +%T)): $*"
    local started=$SECONDS
    timeout "$limit" "$@" >"$log/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$log/$name.log"
    echo "== $name: exit $rc after $((SECONDS - started)) s"
}

for what in "$@"; do
    case $what in
    tests) step tests 200 python3 -m pytest -m gpu tests/train/test_gpu.py -q -p no:cacheprovider ;;
    throughput) step throughput-resnet18 150 python3 bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 128 --epochs 4 --loader-workers 4 8 "${photos[@]}" ;;
    effnet) step throughput-effnet 120 python3 bench/throughput.py --backbone efficientnet_b0 --image-size 224 --batch-size 128 --epochs 4 "${photos[@]}" ;;
    heavy) step throughput-heavy 120 python3 bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 128 --augment heavy --epochs 4 "${photos[@]}" ;;
    packing) step packing 200 python3 bench/packing.py --backbone resnet18 --image-size 128 --batch-size 64 --epochs 4 --settle 12 "${photos[@]}" ;;
    # What keeps resnet18's trial at ~0.8 of the model (BENCHMARKS.md): fewer or lower-priority
    # loader workers, a CUDA graph of the step against kernel-launch cost, fused optimizer kernels.
    gap) step gap-workers 180 python3 bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 128 --epochs 4 --loader-workers 12 --worker-nice 10 --unfused "${photos[@]}"
         step gap-graphs 200 python3 bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 128 --epochs 4 --compile reduce-overhead "${photos[@]}" ;;
    # CUDA graphs on both backbones, with what compiling costs (the first epoch against the others;
    # resnet18's from empty caches first, as a study meets each new shape).
    graphs) step graphs-resnet18 300 python3 bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 128 --epochs 4 --compile reduce-overhead --cold-compile --loader-workers 12 "${photos[@]}"
            step graphs-effnet 200 python3 bench/throughput.py --backbone efficientnet_b0 --image-size 224 --batch-size 128 --epochs 4 --compile reduce-overhead "${photos[@]}" ;;
    # Batches straight from the page-locked ring against copied by the pin thread, eager (pagelock)
    # and graphed (pagegraphs); eager with the training process on cores apart from the loader workers.
    pagelock) step pagelock-eager 160 python3 bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 128 --epochs 4 --copied-ring --cores-apart "${photos[@]}" ;;
    pagegraphs) step pagelock-graphs 220 python3 bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 128 --epochs 4 --compile reduce-overhead --copied-ring "${photos[@]}" ;;
    # Where the trial's time goes (torch.profiler over epoch 2): host time by op, GPU busy, host waits.
    profile) step profile 200 python3 bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 128 --epochs 3 --profile "${photos[@]}" ;;
    # The augmentation in batch on the GPU (train.augment_on: gpu) against the workers' figures above.
    gpuaug) step gpuaug-heavy 120 python3 bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 128 --augment heavy --augment-on gpu --epochs 4 "${photos[@]}"
            step gpuaug-light 120 python3 bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 128 --augment-on gpu --epochs 4 "${photos[@]}" ;;
    effgpu) step effgpu 150 python3 bench/throughput.py --backbone efficientnet_b0 --image-size 224 --batch-size 128 --augment-on gpu --epochs 4 "${photos[@]}" ;;
    ops) step ops 120 python3 bench/data_path.py --image-size 224 --images 256 ;;
    # ~8 min: hpo's 12 trials (~1 min), the common way's (~4 min), then hpo again for the rest of that time.
    naive) step naive 560 python3 bench/naive_vs_hpo.py --image-size 128 --naive-workers 8 --equal-time ;;
    # Held-out macro F1 of new people against wall time: the common way against hpo run -> ensemble -> predict.
    quality) step quality 560 python3 bench/time_to_quality.py --image-size 128 --trials 12 --naive-workers 8 --work runs/bench-quality ;;
    *) echo "unknown step: $what"; exit 2 ;;
    esac
done
