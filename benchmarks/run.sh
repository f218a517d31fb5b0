#!/usr/bin/env bash
# Reproduce the tables of benchmarks/README.md on an otherwise idle machine, in one run:
#   benchmarks/run.sh [bench flags, e.g. --threads 2 --model path/to/model.gguf]
# Writes benchmarks/results.json (every figure, with the machine and the command) and prints the Markdown tables.
# The llama.cpp rows need llama-cpp-python in the same Python (pip install llama-cpp-python).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m minigrok bench --json "$@" > benchmarks/.results.json.tmp
mv benchmarks/.results.json.tmp benchmarks/results.json
python -c 'import json; from minigrok.bench import markdown; print(markdown(json.load(open("benchmarks/results.json"))))'
