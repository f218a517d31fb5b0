#!/usr/bin/env bash
# Reproduce the tables of benchmarks/README.md on an otherwise idle machine, in one run:
#   benchmarks/run.sh [bench flags, e.g. --threads 2 --model path/to/model.gguf]
# Writes benchmarks/results-<cpu kind>.json (or results-<cpu kind>-1thread.json for --threads 1): every figure,
# with the machine (CPU model, family, flags) and the command. Speed holds per kind of CPU, so each kind measured
# keeps its own file. Prints the Markdown tables. The llama.cpp rows need llama-cpp-python in the same Python.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=benchmarks/.results.json.tmp
trap 'rm -f "$tmp"' EXIT  # a failed run leaves no half-written file
python -m minigrok bench --json "$@" > "$tmp"
name=$(python -c 'import json, sys; m = json.load(open(sys.argv[1]))["machine"]; t = m["threads"]
print(m["cpu_kind"] + ("" if t == 2 else "-1thread" if t == 1 else "-%dthreads" % t))' "$tmp")
mv "$tmp" "benchmarks/results-$name.json"
echo "wrote benchmarks/results-$name.json" >&2
python -c "import json, sys; sys.path.insert(0, \"benchmarks\"); from bench import markdown; print(markdown(json.load(open(sys.argv[1]))))" \
  "benchmarks/results-$name.json"
