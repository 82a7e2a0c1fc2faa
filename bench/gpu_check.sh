#!/usr/bin/env bash
# Everything issue 9 asks of a GPU machine, in one run, from the project's root; each step's log goes to
# $OUT (default gpu-logs/) and a failing step does not stop the next. On the offline GPU machine, first
# `source .device-carry/env.sh` (../shared/gpu/README.md: onnxruntime-gpu in pieces).
#   1. the environment: card, driver, onnxruntime and its providers, CuPy;
#   2. device selection with no LD_LIBRARY_PATH: onnxrap loading the CUDA libraries itself, or its one line;
#   3. tests/test_device.py (the GPU vs float64 table of errors: device_report.json);
#   4. the CLI on the bundled model with --device cuda;
#   5. bench/bench_gpu.py, exact float32 then TF32 (BENCH_MODELS, BENCH_BATCHES, BENCH_TF32_MODELS to trim).
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
step() { echo "== $1 ($(date -u +%T))" | tee -a "$OUT/steps.txt"; }

step environment
{ nvidia-smi; $PY -c "import onnxruntime as o, cupy; print('onnxruntime', o.__version__, o.get_available_providers());
print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())"; } > "$OUT/env.txt" 2>&1

step "device without LD_LIBRARY_PATH"
env -u LD_LIBRARY_PATH $PY -c "from onnxrap.device import resolve; print(resolve('auto').note)" \
  > "$OUT/device_no_ld_path.txt" 2>&1
$PY -c "from onnxrap.device import resolve; print(resolve('cuda').note)" > "$OUT/device.txt" 2>&1

step tests
ONNXRAP_DEVICE_REPORT="$OUT/device_report.json" timeout 420 $PY -m pytest -q -rs -p no:cacheprovider \
  tests/test_device.py > "$OUT/pytest.txt" 2>&1
echo "exit $?" >> "$OUT/pytest.txt"

step cli
timeout 120 $PY -m onnxrap explain models/digits_cnn.onnx models/images/*.png --device cuda -o "$OUT/cli" \
  --method rap,lrp-eps,gradient > "$OUT/cli.txt" 2>&1
echo "exit $?" >> "$OUT/cli.txt"

step bench
timeout 900 $PY bench/bench_gpu.py --models "${BENCH_MODELS:-vgg16,resnet50,inception_v3,mobilenet_v2}" \
  --batches "${BENCH_BATCHES:-1,32,64,128}" --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
echo "exit $?" >> "$OUT/bench.txt"

step "bench tf32"
timeout 300 $PY bench/bench_gpu.py --tf32 --models "${BENCH_TF32_MODELS:-vgg16,resnet50}" --batches 1,32 \
  --json "$OUT/bench_tf32.json" > "$OUT/bench_tf32.txt" 2>&1
echo "exit $?" >> "$OUT/bench_tf32.txt"
step done
