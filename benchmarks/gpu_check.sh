#!/usr/bin/env bash
# benchmarks/gpu_check.py on a GPU machine with no network (the borrowed H200: no registry, <= 64 MiB travels).
#
#   benchmarks/gpu_check.sh stage        # here, with package access: fill .whl/ and .gpucheck/, print sizes
#   benchmarks/gpu_check.sh run [OUT]    # there: offline install from .whl/, then the check (OUT: gpu_check_out)
#
# What travels: the repository's tracked files (the code), plus two ignored folders named in the device tool's
# `carry`: .whl/ (the wheels of the project's pins that the GPU image lacks or holds in another version, with
# requirements.txt naming them) and .gpucheck/tokenizer/ (SmolLM2's tokenizer files; no weights: every model
# is built from a config). The GPU image keeps its own torch, accelerate, tokenizers and the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

# name==version from constraints.txt. Missing on the GPU image: bitsandbytes (4-bit), pydantic and its parts
# (coinlib.core.params); in other versions there: transformers/peft (the project's tested pair),
# typing_extensions (pydantic needs >= 4.16) and regex (transformers' floor).
PINNED="bitsandbytes peft transformers pydantic pydantic_core annotated-types typing-inspection typing_extensions regex"
LIMIT_MIB=64
RUN_TIMEOUT_S=390   # the check's own budget is 330 s; a machine start and the run fit in 9 minutes of the 15

pin() {  # exact pin of $1 in constraints.txt (names compared with - and _ alike)
    local want="${1//_/-}" name
    while IFS='=' read -r name _ version; do
        [[ "${name//_/-}" == "$want" ]] && { echo "$name==$version"; return; }
    done < <(grep -E '^[A-Za-z0-9_.-]+==' constraints.txt)
    echo "no pin for $1 in constraints.txt" >&2; exit 1
}

stage() {
    local py="${PYTHON:-.venv/bin/python}"
    [[ -x "$py" ]] || py=python3
    rm -rf .whl .gpucheck
    mkdir -p .whl .gpucheck/tokenizer
    local reqs=()
    for p in $PINNED; do reqs+=("$(pin "$p")"); done
    printf '%s\n' "${reqs[@]}" > .whl/requirements.txt
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d .whl "${reqs[@]}"
    # bitsandbytes ships one library per CUDA/ROCm/XPU version (43 MB); the GPU image's torch is built for CUDA 13,
    # so keep the CUDA 13 and CPU libraries only and list the rest out of the wheel's RECORD.
    "$py" - <<'EOF'
import glob, os, re, zipfile
src = glob.glob(".whl/bitsandbytes-*.whl")[0]
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
drop = lambda n: "libbitsandbytes_" in n and not keep.search(n)
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if drop(item.filename):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(keepends=True) if not drop(l.split(b",")[0].decode()))
        zout.writestr(item, data)
os.replace(tmp, src)
EOF
    local tok
    tok="$("$py" -c 'from coinlib.core.models import resolve_model; print(resolve_model("smollm2-135m-instruct")[0])')"
    cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json .gpucheck/tokenizer/
    cp "$tok"/chat_template.jinja "$tok"/special_tokens_map.json .gpucheck/tokenizer/ 2>/dev/null || true
    local tracked extra total
    tracked=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
    extra=$(du -cb .whl .gpucheck | tail -1 | cut -f1)
    total=$((tracked + extra))
    du -sh .whl .gpucheck
    printf 'travels: %.1f MiB (code %.1f MiB + wheels and tokenizer %.1f MiB) of %d MiB\n' \
        "$(bc -l <<< "$total/1048576")" "$(bc -l <<< "$tracked/1048576")" "$(bc -l <<< "$extra/1048576")" "$LIMIT_MIB"
    if (( total > LIMIT_MIB * 1048576 )); then
        # committed study progress (optimizer state) is the usual bulk: move it out of the tree during the call
        echo "over the $LIMIT_MIB MiB limit; the largest tracked files:" >&2
        git ls-files -z | du -b --files0-from=- | sort -rn | head -5 >&2
        exit 1
    fi
    echo "device tool: carry [.whl, .gpucheck], command 'bash benchmarks/gpu_check.sh run \$OUT', timeout_s $((RUN_TIMEOUT_S + 60))"
}

run() {
    local out="${1:-gpu_check_out}"
    nvidia-smi -L || true
    python3 -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site -r .whl/requirements.txt
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
    timeout "$RUN_TIMEOUT_S" python3 benchmarks/gpu_check.py "$out" --tokenizer .gpucheck/tokenizer --budget 330
}

case "${1:-}" in
    stage) stage ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 stage | run [OUT]" >&2; exit 2 ;;
esac
