#!/usr/bin/env bash
# The CUDA paths end to end on a machine with a GPU: installs what is missing (PyPI only), then runs bench/gpu.py,
# which writes bench/gpu.md section by section (a timeout keeps what ran).
#
#   bash bench/gpu.sh                      # on the GPU machine, from anywhere
#   bash bench/gpu.sh --sections producer,site --repeats 20
#   bash bench/gpu.sh --device cpu         # a dry run on a CPU machine (Triton's interpreter, tiny shapes)
#
# Environment: PYTHON (default python), GPU_BENCH_TIMEOUT (seconds for gpu.py, default 600), GPU_BENCH_NO_INSTALL=1
# to install nothing. Installs only when an import fails: lampc with its test and model extras, triton (a CUDA
# torch from PyPI brings it already), and onnxruntime-gpu in place of onnxruntime (the two cannot be installed side
# by side: the CPU one is removed and the GPU one reinstalled over the files they share). It never installs torch:
# a CPU-only torch is reported by gpu.py, not replaced by a multi-GB download.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
log() { echo "gpu.sh: $*" >&2; }

if [[ "${GPU_BENCH_NO_INSTALL:-0}" != 1 ]]; then
    if ! "$PY" -c "import lampc, pytest, transformers, gguf" 2>/dev/null; then
        log "installing lampc[test,models]"
        "$PY" -m pip install -q -e '.[test,models]' || log "pip install -e '.[test,models]' failed; going on"
    fi
    if ! "$PY" -c "import triton" 2>/dev/null; then
        log "installing triton"
        "$PY" -m pip install -q triton || log "pip install triton failed; the Triton sections will say so"
    fi
    has_gpu="import torch, sys; sys.exit(not torch.cuda.is_available())"
    has_ort_cuda="import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"
    if "$PY" -c "$has_gpu" 2>/dev/null && ! "$PY" -c "$has_ort_cuda" 2>/dev/null; then
        log "installing onnxruntime-gpu in place of onnxruntime"
        if "$PY" -m pip install -q onnxruntime-gpu; then
            "$PY" -m pip uninstall -q -y onnxruntime
            "$PY" -m pip install -q --force-reinstall --no-deps onnxruntime-gpu ||
                log "reinstalling onnxruntime-gpu failed"
        else
            log "pip install onnxruntime-gpu failed; the onnx section runs on what is installed"
        fi
    fi
fi

"$PY" -c "import torch; print('gpu.sh: torch', torch.__version__, 'CUDA', torch.version.cuda, 'device:',
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" >&2
timeout --signal=TERM --kill-after=15 "${GPU_BENCH_TIMEOUT:-600}" "$PY" bench/gpu.py "$@"
status=$?
[[ $status == 124 ]] && log "gpu.py ran past ${GPU_BENCH_TIMEOUT:-600} s; bench/gpu.md holds the sections that finished"
exit $status
