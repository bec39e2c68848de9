#!/usr/bin/env bash
# session 11: where the flash backward's time goes. ncu (full set) on the B/16 chunk-64
# shape of flash_bench: the forward, Delta and the fused backward (the second flash step),
# then the split backward's dQ and dK/dV kernels; stall reasons and pipe use per kernel.
# Then the flash correctness cases again (the fused kernel's dQ now two chains) and B/16
# 4096/256 with host pixels, split against fused.
. tools/bench/build.sh
export CK_FORK=no CK_RUN_CASE=flash_bench
prof() { # NAME SKIP COUNT
  timeout 200 ncu --set full -k regex:flash_ --launch-skip $2 --launch-count $3 -o "$OUT/ncu-$1" build-gpu/tests/test_gpu >"$OUT/ncu-$1.log" 2>&1
  echo "== ncu $1 rc $? ($(( $(date +%s) - t0 )) s)"
  ncu -i "$OUT/ncu-$1.ncu-rep" >"$OUT/ncu-$1.txt" 2>&1
  ncu -i "$OUT/ncu-$1.ncu-rep" --page raw --csv >"$OUT/ncu-$1-raw.csv" 2>&1
  grep -E "^  [a-z_]+.*\(|Duration|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Shared Memory |Compute \(SM\) Throughput|Executed Ipc Active" "$OUT/ncu-$1.txt" | head -60
}
prof fused 3 3
prof split 47 2
python3 - "$OUT" <<'PY'
import csv, sys, glob
for f in sorted(glob.glob(sys.argv[1] + "/ncu-*-raw.csv")):
    rows = list(csv.reader(open(f)))
    hdr = next((r for r in rows if "Kernel Name" in r), None)
    if not hdr: continue
    data = [r for r in rows[rows.index(hdr) + 2:] if len(r) == len(hdr)]
    cols = [i for i, h in enumerate(hdr) if h.startswith("smsp__average_warps_issue_stalled_") and h.endswith("_per_issue_active.ratio")]
    for r in data:
        name = r[hdr.index("Kernel Name")][:60]
        st = sorted(((float(r[i].replace(",", "") or 0), hdr[i][34:-23]) for i in cols), reverse=True)[:8]
        print(name, " ".join(f"{n}={v:.2f}" for v, n in st))
PY
unset CK_RUN_CASE
CK_RUN_CASE=flash timeout 200 build-gpu/tests/test_gpu >"$OUT/flash.txt" 2>&1; echo "== flash rc $?"; grep -iE "fail|Checks" "$OUT/flash.txt" | head
for im in flash-split auto flash-split auto; do
  GC_ATTN_IMPL=$im timeout 150 ./build-gpu/tools/gcache bench --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host >/tmp/one.txt 2>&1
  echo "[$im B/16 4096/256 host] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'pairs/s' /tmp/one.txt | head -1)"
done
rm -f "$OUT"/*.ncu-rep.gz; gzip -f "$OUT"/*.ncu-rep "$OUT"/*-raw.csv
echo "all took $(( $(date +%s) - t0 )) s"
