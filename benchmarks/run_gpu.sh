#!/usr/bin/env bash
# Runs the GPU test suite, the benchmarks and the certification on a CUDA machine; writes each
# output under the folder given as $1 (default: benchmarks/results/latest).
set -u
out=${1:-benchmarks/results/latest}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  date -u +%Y-%m-%dT%H:%M:%SZ; } > "$out/environment.txt" 2>&1
python3 -m pytest tests -q -p no:cacheprovider -rfEs > "$out/gpu-tests.txt" 2>&1
echo "pytest exit: $?" >> "$out/gpu-tests.txt"
python3 -m graphguard certify > "$out/certify.txt" 2>&1 || python3 -c "from graphguard._certify import main; raise SystemExit(main([]))" > "$out/certify.txt" 2>&1
log="$out/benchmark-logs.txt"
for cmd in "benchmarks/overhead.py --reps 100 --out $out/overhead.md" "benchmarks/graphed.py --out $out/graphed.md" \
           "benchmarks/dsa_speed.py --out $out/dsa_speed.md --json $out/dsa_speed.json"; do
  echo "== python3 $cmd" >> "$log"
  python3 $cmd >> "$log" 2>&1; echo "exit: $?" >> "$log"
done
tail -n 3 "$out/gpu-tests.txt"; cat "$out/certify.txt" "$out/overhead.md" "$out/graphed.md"
