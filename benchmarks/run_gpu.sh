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
# pytest-benchmark (if installed) refuses to run beside xdist; xdist workers get few intra-op
# threads each, or they oversubscribe the cores (10 workers x 16 threads ran slower than serial).
par=""
if python3 -c "import xdist" 2>/dev/null; then par="-n 4"; export OMP_NUM_THREADS=2; fi
python3 -m pytest tests -q -p no:cacheprovider -p no:benchmark $par -rfEs > "$out/gpu-tests.txt" 2>&1
echo "pytest exit: $?" >> "$out/gpu-tests.txt"
unset OMP_NUM_THREADS
python3 -m graphguard certify > "$out/certify.txt" 2>&1 || python3 -c "from graphguard._certify import main; raise SystemExit(main([]))" > "$out/certify.txt" 2>&1
log="$out/benchmark-logs.txt"
for cmd in "benchmarks/overhead.py --reps 100 --out $out/overhead.md" "benchmarks/graphed.py --out $out/graphed.md" \
           "benchmarks/dsa_speed.py --out $out/dsa_speed.md --json $out/dsa_speed.json" \
           "benchmarks/capture_cost.py --step dsa --out $out/capture_cost-dsa.md" \
           "benchmarks/capture_cost.py --step mlp --out $out/capture_cost-mlp.md" \
           "benchmarks/measure_rules.py --out $out/measure-rules.md" \
           "benchmarks/audit_sweep.py --gpu --jobs 8 --out $out/audit_sweep.md"; do
  echo "== python3 $cmd" >> "$log"
  python3 $cmd >> "$log" 2>&1; echo "exit: $?" >> "$log"
done
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  for raw in "" "--raw"; do
    name="dist-gpu${raw:+-raw}"
    echo "== python3 benchmarks/dist_gpu.py $raw" >> "$log"
    python3 benchmarks/dist_gpu.py $raw --case-timeout 40 --out "$out/$name.md" --json "$out/$name.json" >> "$log" 2>&1
    echo "exit: $?" >> "$log"
  done
fi
tail -n 3 "$out/gpu-tests.txt"; cat "$out/certify.txt" "$out/overhead.md" "$out/graphed.md"
