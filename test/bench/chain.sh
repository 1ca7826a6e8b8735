#!/usr/bin/env bash
# How does an overlay workspace's lookup cost grow with the number of lower layers?
# A 20k-file base layer plus N-1 small layers; time `find` and `stat` of every file through the
# overlay, with the dentry cache dropped first (cold) and again (warm). Used to pick the chain
# limit (docs/design.md). Usage: test/bench/chain.sh [N ...]
set -euo pipefail
W=$(mktemp -d /tmp/strata-chain-XXXX)
trap 'umount -q "$W/m" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/base"
for d in $(seq 1 200); do mkdir -p "$W/base/d$d"; for f in $(seq 1 100); do echo "$d $f" > "$W/base/d$d/f$f"; done; done
for n in "${@:-1 4 8 16 32 64}"; do
  lowers="$W/base"
  for i in $(seq 2 "$n"); do mkdir -p "$W/l$i/d$((i % 200 + 1))"; echo x > "$W/l$i/d$((i % 200 + 1))/new$i"; lowers="$W/l$i:$lowers"; done
  rm -rf "$W/u" "$W/w"; mkdir -p "$W/u" "$W/w" "$W/m"
  mount -t overlay strata -o "lowerdir=$lowers,upperdir=$W/u,workdir=$W/w,redirect_dir=on" "$W/m"
  sync; echo 2 > /proc/sys/vm/drop_caches
  t0=$(date +%s%N); find "$W/m" | wc -l > /dev/null; t1=$(date +%s%N)
  find "$W/m" -type f -exec stat -c %s {} + > /dev/null; t2=$(date +%s%N)
  find "$W/m" | wc -l > /dev/null; t3=$(date +%s%N)
  printf 'layers=%-3s find cold %6.1f ms  stat all %6.1f ms  find warm %6.1f ms\n' "$n" \
    "$(echo "($t1-$t0)/1000000" | bc -l)" "$(echo "($t2-$t1)/1000000" | bc -l)" "$(echo "($t3-$t2)/1000000" | bc -l)"
  umount "$W/m"
done
