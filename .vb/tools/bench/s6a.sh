#!/usr/bin/env bash
# session 6, first device run: build, the whole gpu suite (after matmul.cu's heuristic()
# refactor), the flash timing, and a per-kernel profile of one DINOv3 and one B/16 step
. tools/bench/build.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
. tools/bench/suite.sh
G=./build-gpu/tools/gcache
which nsys ncu
prof() { # name, bench args...
  local n=$1; shift
  if which nsys >/dev/null 2>&1; then
    timeout 150 nsys profile -o "$OUT/$n" -f true $G bench "$@" >"$OUT/$n.log" 2>&1
    nsys stats -q --report cuda_gpu_kern_sum --format csv "$OUT/$n.nsys-rep" >"$OUT/$n.csv" 2>/dev/null
    rm -f "$OUT/$n.nsys-rep" "$OUT/$n.sqlite"
  else
    timeout 150 ncu --clock-control none --metrics gpu__time_duration.sum --csv $G bench "$@" >"$OUT/$n.csv" 2>"$OUT/$n.log"
  fi
  python3 tools/bench/ncu_agg.py "$OUT/$n.csv" >"$OUT/$n-sum.txt" 2>&1; head -40 "$OUT/$n-sum.txt"
  gzip -f "$OUT/$n.csv"
}
prof dino --model dinov3-vit-b16 --batch 256 --chunk 64 --steps 1 --warmup 1
prof b16 --model clip-vit-b16 --batch 512 --chunk 256 --steps 1 --warmup 1
echo "all took $(( $(date +%s) - t0 )) s"
