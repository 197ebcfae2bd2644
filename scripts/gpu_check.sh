#!/usr/bin/env bash
# GPU check for a session lent the device machine (not CI). The device image has torch, lightning,
# tokenizers and tensorboard; carry the rest as wheels (see /work/.library/device/README.md), e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl \
#       hydra-core==1.3.8 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 litdata==0.2.76 ...
# then: run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 LITDATA_DISABLE_VERSION_CHECK=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 scripts/gpu_check.py --out "${OUT:-/tmp}/gpu_check" "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
