#!/usr/bin/env bash
# session 11, first device call: the whole GPU suite (the first after session 10's last
# kernel change, ec80c16, and this session's store_boxes helper), the flash timing now
# with the forward alone, PyTorch's SDPA at the same four shapes (sdpa_probe.py), and the
# two rows still short of their targets as this session found them.
. tools/bench/build.sh
. tools/bench/suite.sh
timeout 120 python3 tools/bench/sdpa_probe.py 2>&1 | grep -v Warning | tee "$OUT/sdpa.txt"
row() { timeout 150 ./build-gpu/tools/gcache bench "$@" >/tmp/one.txt 2>&1
  echo "[$*] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1) | $(grep -E 'pairs/s' /tmp/one.txt | head -1)"
  sed "s|^|[$*] |" /tmp/one.txt >>"$OUT/rows.txt"; }
row --model dinov3-vit-b16 --batch 256 --chunk 64
row --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
echo "all took $(( $(date +%s) - t0 )) s"
