#!/usr/bin/env bash
# Paired backups of the benchmark's data set: bk and the shell pipeline taking turns,
# each writing to the disk and to tmpfs, so a noisy machine's drift hits every variant
# alike and the disk's share of each tool's time shows.
#
#   bash bench/ab.sh [ROUNDS]        # after bench/run.sh (it needs bench/out/bk)
#
# Variants, once per round in this order: bk-disk, bk-tmpfs, shell-disk, shell-tmpfs,
# shell+fsync-disk. Before each: `sync` and one second of rest. Around each, /proc/stat:
# CPU busy, idle, I/O wait and steal (core-seconds of the whole machine). The data set is
# read into the page cache before each (as in run.sh). The summary
# leaves out round 1 (warm-up) when there are more than two rounds.
# Environment: BENCH_OUT (default bench/out), BENCH_BK (default target/release/bk),
# AB_TMP (a tmpfs directory, default /dev/shm/bk-ab).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
OUT=${BENCH_OUT:-$BENCH_DIR/out}
BK=${BENCH_BK:-$BENCH_DIR/../target/release/bk}
TMP=${AB_TMP:-/dev/shm/bk-ab}
ROUNDS=${1:-6}
BKW=$OUT/bk

[[ -f $BKW/bk.toml && -d $OUT/data ]] || { echo "ab.sh: run bench/run.sh first (no $BKW/bk.toml)" >&2; exit 1; }
[[ -x $BK ]] || { echo "ab.sh: no bk at $BK (set BENCH_BK)" >&2; exit 1; }
[[ $(stat -f -c %T "$(dirname "$TMP")") == tmpfs ]] || { echo "ab.sh: $(dirname "$TMP") is not tmpfs" >&2; exit 1; }

mkdir -p "$TMP"
# The same job with the repository and catalog on tmpfs.
sed -e "s#^url = \"file://.*\"#url = \"file://$TMP/repo\"#" \
    -e "s#^path = \".*catalog.db\"#path = \"$TMP/catalog.db\"#" "$BKW/bk.toml" >"$TMP/bk.toml"
grep -q "file://$TMP/repo" "$TMP/bk.toml" || { echo "ab.sh: cannot point $BKW/bk.toml at $TMP" >&2; exit 1; }
RECIPIENT=$(grep -o 'age1[a-z0-9]*' "$BKW/bk.toml" | head -1)
LEVEL=$(sed -n 's/^level = \([0-9]*\)/\1/p' "$BKW/bk.toml" | head -1)
ROWS=$OUT/ab.tsv
: >"$ROWS"

# busy idle iowait steal, in ticks, from the first line of /proc/stat
ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8, $5, $6, $9}' /proc/stat; }

shell() { # DEST [sync]
    tar -C "$OUT" -cf - data | zstd "-$LEVEL" -T0 -q -c | age -r "$RECIPIENT" >"$1"
    if [[ ${2:-} == sync ]]; then sync "$1"; fi
}

for round in $(seq "$ROUNDS"); do
    for v in bk-disk bk-tmpfs shell-disk shell-tmpfs shell+fsync-disk; do
        rm -rf "$BKW/repo" "$BKW"/catalog.db* "$TMP/repo" "$TMP"/catalog.db* "$OUT/ab.age" "$TMP/ab.age"
        mkdir "$BKW/repo" "$TMP/repo"
        # The data set from the page cache for every variant (run.sh's warm).
        tar -C "$OUT" -cf - data | cat >/dev/null
        sync
        sleep 1
        read -r b0 i0 w0 s0 < <(ticks)
        t0=$(date +%s.%N)
        case $v in
            bk-disk) "$BK" --config "$BKW/bk.toml" run data >/dev/null ;;
            bk-tmpfs) "$BK" --config "$TMP/bk.toml" run data >/dev/null ;;
            shell-disk) shell "$OUT/ab.age" ;;
            shell-tmpfs) shell "$TMP/ab.age" ;;
            shell+fsync-disk) shell "$OUT/ab.age" sync ;;
        esac
        t1=$(date +%s.%N)
        read -r b1 i1 w1 s1 < <(ticks)
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$v" "$(echo "$t1 - $t0" | bc)" \
            $((b1 - b0)) $((i1 - i0)) $((w1 - w0)) $((s1 - s0)) >>"$ROWS"
        echo "ab: round $round $v $(echo "$t1 - $t0" | bc) s" >&2
    done
done
rm -rf "$TMP" "$OUT/ab.age" "$BKW/repo" "$BKW"/catalog.db*
mkdir "$BKW/repo"

python3 - "$ROWS" "$ROUNDS" "$(getconf CLK_TCK)" <<'EOF'
import collections, statistics as st, sys
rows, rounds, hz = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
skip = 1 if rounds > 2 else 0
by = collections.OrderedDict()
for line in open(rows):
    r, v, wall, busy, idle, iow, steal = line.split("\t")
    if int(r) > skip:
        by.setdefault(v, []).append((float(wall), *(int(x) / hz for x in (busy, idle, iow, steal))))
med = {v: st.median(x[0] for x in xs) for v, xs in by.items()}
print("| variant | wall s (median, range) | CPU core-s | idle | I/O wait | steal |")
print("|---|---|---|---|---|---|")
for v, xs in by.items():
    walls = [x[0] for x in xs]
    mean = lambda i: st.mean(x[i] for x in xs)
    print("| %s | %.2f (%.2f–%.2f) | %.2f | %.2f | %.2f | %.2f |"
          % (v, med[v], min(walls), max(walls), mean(1), mean(2), mean(3), mean(4)))
print()
print("rounds %d to %d; medians: bk / shell on the disk %.2fx, on tmpfs %.2fx; "
      "bk vs shell + fsync on the disk %.2fx"
      % (skip + 1, rounds, med["shell-disk"] / med["bk-disk"],
         med["shell-tmpfs"] / med["bk-tmpfs"], med["shell+fsync-disk"] / med["bk-disk"]))
EOF
