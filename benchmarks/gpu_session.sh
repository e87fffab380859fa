#!/usr/bin/env bash
# The GPU figures of the README's table, in one run on a CUDA machine, within a time budget: the
# CUDA sync test, synthesis step and stacking, retrain throughput, the DARTS step, and last the
# DARTS step through torch.compile (SPOS scoring needs a dataset there: benchmarks/spos_scoring.py).
#
#     bash benchmarks/gpu_session.sh OUTDIR [SECONDS]
#
# Writes one text file per part into OUTDIR (gpu, synctest, synthesis, stack, retrain, darts,
# compile), in order of importance; each part gets at most its own limit and never more than what
# is left of SECONDS (default 600), so a short lease still returns the first parts whole. Run from
# the repository root; needs torch with CUDA and dfnas's dependencies importable.
set -u
out=${1:?usage: gpu_session.sh OUTDIR [SECONDS]}
budget=${2:-600}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

part() {  # part NAME LIMIT COMMAND...: run COMMAND, appending to NAME.txt, for at most LIMIT s
    local name=$1 limit=$2 left=$((budget - SECONDS))
    shift 2
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        echo "## skipped (budget spent): $*" >>"$out/$name.txt"
        return
    fi
    echo "## $* (limit ${limit} s)" >>"$out/$name.txt"
    local start=$SECONDS
    timeout "$limit" "$@" >>"$out/$name.txt" 2>&1
    echo "## exit $? after $((SECONDS - start)) s" >>"$out/$name.txt"
}

part gpu 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
part gpu 30 "$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
part synctest 120 "$py" -m pytest -q -p no:cacheprovider tests/test_host_syncs.py -k cuda
for precision in fp32 bf16; do
    part synthesis 60 "$py" benchmarks/synthesis_step.py --model torchvision:resnet50 --size 224 --batch 128 \
        --iterations 10 --repeats 3 --device cuda --precision "$precision"
done
part stack 60 "$py" benchmarks/synthesis_step.py --model torchvision:resnet50 --size 224 --batch 32 \
    --iterations 10 --repeats 3 --device cuda --precision bf16 --stack 4
part stack 60 "$py" benchmarks/synthesis_step.py --model torchvision:resnet50 --size 224 --batch 128 \
    --iterations 5 --repeats 3 --device cuda --precision bf16 --stack 2
for space in spos proxyless; do  # each precision in a process of its own: about 60 s a space
    part retrain 150 "$py" benchmarks/retrain_throughput.py --device cuda --batch 256 --steps 30 --epochs 2 \
        --channels-last true --spaces "$space"
done
part darts 90 "$py" benchmarks/darts_step.py --device cuda --channels 16 --cells 8 --batch 64 --size 32 \
    --repeats 5
part compile 300 "$py" benchmarks/darts_step.py --device cuda --channels 16 --cells 8 --batch 64 --size 32 \
    --repeats 5 --compile cudagraphs
