#!/usr/bin/env bash
# Runs the GPU test suite, the benchmarks and the certification on a CUDA machine; writes each
# output under the folder given as $1 (default: benchmarks/results/latest). $2 picks a part, so
# that each fits one device call (about 10 minutes): tests (the suite and certify), bench (the
# timing benchmarks), measure (measure_rules.py, the distributed tables where two GPUs exist),
# sweep (audit_sweep.py --gpu), or all (default).
set -u
out=${1:-benchmarks/results/latest}
part=${2:-all}
want() { [ "$part" = all ] || [ "$part" = "$1" ]; }
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  date -u +%Y-%m-%dT%H:%M:%SZ; } > "$out/environment.txt" 2>&1
log="$out/benchmark-logs.txt"
run() { echo "== python3 $*" >> "$log"; python3 "$@" >> "$log" 2>&1; echo "exit: $?" >> "$log"; }
if want tests; then
  # pytest-benchmark (if installed) refuses to run beside xdist; xdist workers get few intra-op
  # threads each, or they oversubscribe the cores (10 workers x 16 threads ran slower than serial)
  par=""
  if python3 -c "import xdist" 2>/dev/null; then par="-n 4"; export OMP_NUM_THREADS=2; fi
  # -v: each result is written as it comes, so a run cut short still names its failures.
  # test_realmodels runs apart and without xdist: its module fixture runs every case in fresh
  # processes, several at a time, and each xdist worker would run that fixture again.
  python3 -m pytest tests -v -p no:cacheprovider -p no:benchmark $par -rfE \
    --ignore=tests/test_realmodels.py > "$out/gpu-tests.txt" 2>&1
  echo "pytest exit: $?" >> "$out/gpu-tests.txt"
  unset OMP_NUM_THREADS
  python3 -m pytest tests/test_realmodels.py -v -p no:cacheprovider -p no:benchmark -p no:xdist \
    -rfE > "$out/gpu-tests-realmodels.txt" 2>&1
  echo "pytest exit: $?" >> "$out/gpu-tests-realmodels.txt"
  python3 -m graphguard certify > "$out/certify.txt" 2>&1
  tail -n 3 "$out/gpu-tests.txt" "$out/gpu-tests-realmodels.txt"; cat "$out/certify.txt"
fi
if want bench; then
  run benchmarks/overhead.py --reps 100 --out "$out/overhead.md"
  run benchmarks/graphed.py --out "$out/graphed.md"
  run benchmarks/dsa_speed.py --out "$out/dsa_speed.md" --json "$out/dsa_speed.json"
  run benchmarks/capture_cost.py --step dsa --out "$out/capture_cost-dsa.md"
  run benchmarks/capture_cost.py --step mlp --out "$out/capture_cost-mlp.md"
  cat "$out/overhead.md" "$out/graphed.md"
fi
if want sweep; then
  run benchmarks/audit_sweep.py --gpu --jobs 14 --out "$out/audit_sweep.md"
fi
if want measure; then
  run benchmarks/measure_rules.py --jobs 6 --out "$out/measure-rules.md"
fi
if want measure && [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  for raw in "" "--raw"; do
    name="dist-gpu${raw:+-raw}"
    echo "== python3 benchmarks/dist_gpu.py $raw" >> "$log"
    python3 benchmarks/dist_gpu.py $raw --case-timeout 40 --out "$out/$name.md" --json "$out/$name.json" >> "$log" 2>&1
    echo "exit: $?" >> "$log"
  done
fi
tail -n 20 "$log"
