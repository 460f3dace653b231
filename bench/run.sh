#!/usr/bin/env bash
# bk benchmark: bk vs the equivalent shell pipeline (tar | zstd | age) vs restic and borg,
# on one deterministic mixed data set. Usage and variables: bench/README.md.
#
#   bash bench/run.sh                      # 1 GiB data set, peers included
#   BENCH_SIZE_MB=256 BENCH_PEERS=0 bash bench/run.sh
#
# Every measured command runs under GNU time (`/usr/bin/time -f '%e %U %S %M'`): wall
# seconds, user and system CPU seconds (children included), and peak RSS in KiB. Note that
# for a pipeline GNU time reports the peak RSS of the *largest single process* in it, not
# the sum of the pipeline's processes.
set -euo pipefail

# ---------------------------------------------------------------------------- settings
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT=${BENCH_OUT:-$BENCH_DIR/out}
SIZE_MB=${BENCH_SIZE_MB:-1024}
SEED=${BENCH_SEED:-42}
PEERS=${BENCH_PEERS:-1}
LEVEL=${BENCH_ZSTD_LEVEL:-3}
WORKERS=${BENCH_WORKERS:-2}
RUNS=${BENCH_RUNS:-3}   # repetitions of every step; the report shows the median
QUIET_WAIT=${BENCH_QUIET_WAIT:-20}   # max seconds to wait for an idle machine before a run
# A separate target directory, so that the release build neither waits on nor
# invalidates the debug builds other people run in target/.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/bench}
BK=${BENCH_BK:-}   # a prebuilt bk binary: skips the cargo build
SSH=${BENCH_SSH:-1}           # 1: also back up the data set over SSH (loopback sshd)
DB_SCALE=${BENCH_DB_SCALE:-40}   # pgbench scale of the PostgreSQL benchmark (0: skip it)
BIG_GB=${BENCH_BIG_GB:-10}    # size of the long-stream memory run in GiB (0: skip it)
SCALE=${BENCH_SCALE:-1}       # 1: run bench/scale.sh (listing at 100k backups, 50 jobs/10 hosts)

DATA=$OUT/data
LOGS=$OUT/logs
ROWS=$OUT/rows.tsv
TIMEF=$OUT/.time

die() { echo "bench: error: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

[[ $SIZE_MB =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZE_MB must be a positive integer (got '$SIZE_MB')"
[[ $PEERS == 0 || $PEERS == 1 ]] || die "BENCH_PEERS must be 0 or 1 (got '$PEERS')"
[[ $WORKERS =~ ^[0-9]+$ ]] || die "BENCH_WORKERS must be a number (got '$WORKERS')"
[[ $LEVEL =~ ^[0-9]+$ ]] || die "BENCH_ZSTD_LEVEL must be a number (got '$LEVEL')"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer (got '$RUNS')"
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "BENCH_QUIET_WAIT must be a number of seconds (got '$QUIET_WAIT')"
[[ $SSH == 0 || $SSH == 1 ]] || die "BENCH_SSH must be 0 or 1 (got '$SSH')"
[[ $DB_SCALE =~ ^[0-9]+$ ]] || die "BENCH_DB_SCALE must be a number (got '$DB_SCALE')"
[[ $BIG_GB =~ ^[0-9]+$ ]] || die "BENCH_BIG_GB must be a number of GiB (got '$BIG_GB')"
[[ $SCALE == 0 || $SCALE == 1 ]] || die "BENCH_SCALE must be 0 or 1 (got '$SCALE')"

# Background services (sshd, PostgreSQL) register their stop commands here.
CLEANUP=()
cleanup() { local c; for c in "${CLEANUP[@]}"; do eval "$c" || true; done; }
trap cleanup EXIT

# ------------------------------------------------------------------ 1. tools from Debian
# command -> Debian package. GNU time (package `time`) is needed for peak RSS and CPU;
# bash's `time` keyword reports neither.
declare -A PKG=([age]=age [zstd]=zstd [/usr/bin/time]=time [tar]=tar [python3]=python3)
if [[ $PEERS == 1 ]]; then PKG[restic]=restic; PKG[borg]=borgbackup; fi
if [[ $SSH == 1 || $SCALE == 1 ]]; then PKG[/usr/sbin/sshd]=openssh-server; PKG[ssh]=openssh-client; fi
if ((DB_SCALE > 0)); then PKG[pgbench]=postgresql-15; PKG[pg_dump]=postgresql-client-15; fi
missing=()
for cmd in "${!PKG[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG[$cmd]}")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing packages (${missing[*]}); run as root or install them: apt-get install ${missing[*]}"
    say "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ------------------------------------------------------------------------ 2. build bk
if [[ -z $BK ]]; then
    command -v cargo >/dev/null || die "cargo not found (or set BENCH_BK to a prebuilt bk binary)"
    say "building bk (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release --quiet -p bk-client -p bk-server) \
        || die "cargo build --release -p bk-client -p bk-server failed (see the compiler output above)"
    BK=$CARGO_TARGET_DIR/release/bk
fi
BK_SERVER=${BENCH_BK_SERVER:-$(dirname "$BK")/bk-server}
[[ -x $BK ]] || die "no bk binary at $BK"

# ---------------------------------------------------------------------- 3. the data set
mkdir -p "$OUT" "$LOGS"
# The stamp names the parameters and the generator's checksum: the (slow) generation is
# skipped only when it would produce exactly the same bytes.
stamp="size_mb=$SIZE_MB seed=$SEED gen=$(sha256sum "$BENCH_DIR/gen_data.py" | cut -c1-16)"
if [[ -f $OUT/data.stamp && $(cat "$OUT/data.stamp") == "$stamp" && -d $DATA ]]; then
    say "data set up to date ($stamp)"
else
    say "generating ${SIZE_MB} MiB data set in $DATA"
    rm -rf "$DATA" "$OUT/data.stamp"
    python3 "$BENCH_DIR/gen_data.py" "$DATA" "$SIZE_MB" "$SEED" >&2
    echo "$stamp" >"$OUT/data.stamp"
fi
DATA_BYTES=$(find -L "$DATA" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
DATA_FILES=$(find -L "$DATA" -type f | wc -l)

# Warm the page cache so every tool reads from memory alike (dropping caches would
# need privileges a container may not have). `| cat` matters: GNU tar skips reading file
# contents when it sees its archive is /dev/null. Not just once: `borg create` drops
# what it read from the page cache (posix_fadvise DONTNEED), so the step after it read
# the data set from the disk: that was bk's backup in every round but the first (2.20 s
# in round 1, 3.26 and 3.21 s after borg, system time 0.67 -> 1.56 s; bk after bk 2.23 s,
# after borg 3.37 s, three pairs each). So `measure` warms it before every step (the
# first time from the disk); when it is cached that costs a fraction of a second, outside
# the timing.
warm() { tar cf - -C "$DATA" . | cat >/dev/null; }

# ------------------------------------------------------------------------ measurement
# busy: CPU jiffies the whole machine has spent busy so far (user nice system irq softirq
# steal). Busy time during a step minus the step's own CPU time is what *other* processes
# took: on a shared 2-core machine that is the noise to look at next to each number.
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
HZ=$(getconf CLK_TCK)

# quiet: write out what earlier runs left in the page cache, then wait (at most
# $QUIET_WAIT s) until the machine has been nearly idle for a second (under a fifth of a
# core busy), so that a run does not start in the middle of somebody else's compile.
# Runs that could not wait show it in the "other CPU s" column. The `sync` matters since
# the tools take turns: without it a run shares the disk with the writeback of the
# previous tool's ~760 MiB, which slows most the tools that make their output durable
# (bk syncs what it stored before it commits it; the shell pipeline's `> FILE` does not).
quiet() {
    local waited=0 b0 b1
    sync
    while ((waited < QUIET_WAIT)); do
        b0=$(busy); sleep 1; b1=$(busy)
        (((b1 - b0) * 5 < HZ)) && return 0
        waited=$((waited + 1))
    done
    say "the machine is still busy after ${QUIET_WAIT}s; measuring anyway"
}

# measure TOOL OPERATION OUTPUT_PATH LOG SETUP -- COMMAND...
# Runs COMMAND once under GNU time, after the (untimed) shell command SETUP, with stdout
# in $LOGS/LOG and stderr in $LOGS/LOG.err. Appends one row to $ROWS, numbered $ROUND
# (set by `rounds`, which repeats the steps); the report keeps the median run of each
# step. OUTPUT_PATH ("-" for none) is measured after the run with du (apparent size).
: >"$ROWS"
measure() {
    local tool=$1 op=$2 output=$3 log=$4 setup=$5
    [[ $6 == -- ]] || die "measure: expected -- before the command"
    shift 6
    local run=${ROUND:-1} wall user sys rss size b0 b1 other
    say "$tool: $op (run $run/${ROUNDS:-1})"
    eval "$setup" || die "$tool $op: preparing run $run failed ($setup)"
    warm
    quiet
    b0=$(busy)
    if ! /usr/bin/time -o "$TIMEF" -f '%e %U %S %M' "$@" >"$LOGS/$log" 2>"$LOGS/$log.err"; then
        tail -n 20 "$LOGS/$log" "$LOGS/$log.err" >&2
        die "$tool $op failed (output in $LOGS/$log and $LOGS/$log.err)"
    fi
    b1=$(busy)
    # On success the time file holds exactly one line.
    read -r wall user sys rss <"$TIMEF"
    other=$(awk -v b="$((b1 - b0))" -v hz="$HZ" -v u="$user" -v s="$sys" \
        'BEGIN {o = b / hz - u - s; printf "%.1f", (o < 0 ? 0 : o)}')
    size=-
    [[ $output == - ]] || size=$(du -sb --apparent-size "$output" | cut -f1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$tool" "$op" "$run" "$wall" "$user" "$sys" "$rss" "$size" "$other" \
        "${STEP_BYTES:-$DATA_BYTES}" >>"$ROWS"
}

# rounds STEP...: runs the step functions (each one `measure`) one after the
# other, $RUNS rounds of them: bk, the shell pipeline and the peers take turns, seconds
# apart, so that this machine's speed drifting over minutes reaches all of them alike and
# the ratios compare like with like (measured one tool's three runs after the other's,
# the shell's backup took 3.63 s in one run and 4.67 s in the next, 13 minutes later).
rounds() {
    local round step
    for ((round = 1; round <= RUNS; round++)); do
        for step in "$@"; do
            ROUND=$round ROUNDS=$RUNS "$step"
        done
    done
}

# fresh DIR: DIR exists and is empty.
fresh() { rm -rf "$1" && mkdir -p "$1"; }
VERIFY="verify (read all, write nothing)"
RESTORE="restore to directory"
RESTORED=$OUT/restore

# ----------------------------------------------------------------------------- 4a. bk
BKW=$OUT/bk
rm -rf "$BKW" && mkdir -p "$BKW" && chmod 700 "$BKW"
RECIPIENT=$("$BK" keygen --output "$BKW/identity.age" 2>"$LOGS/bk-keygen.log" | grep -m1 '^age1') \
    || die "bk keygen printed no age1… recipient (see $LOGS/bk-keygen.log)"
cat >"$BKW/bk.toml" <<EOF
[repository]
url = "file://$BKW/repo"
recipients = ["$RECIPIENT"]

[catalog]
path = "$BKW/catalog.db"

[compression]
level = $LEVEL
workers = $WORKERS

[jobs.data]
kind = "directory"
path = "$DATA"
EOF
chmod 600 "$BKW/bk.toml"

# A new repository and catalog for every run, so each backup is a first, full one.
step_bk_backup() {
    measure bk backup "$BKW/repo" bk-backup.json \
        'rm -rf "$BKW/repo" "$BKW"/catalog.db* && mkdir "$BKW/repo"' -- \
        "$BK" --config "$BKW/bk.toml" run data --json
}
step_bk_verify() {
    measure bk "$VERIFY" - bk-verify.log : -- \
        "$BK" --config "$BKW/bk.toml" restore data latest --identity "$BKW/identity.age" --verify
}
# bk restores into a new (or empty) directory.
step_bk_restore() {
    measure bk "$RESTORE" - bk-restore.log 'rm -rf "$RESTORED"' -- \
        "$BK" --config "$BKW/bk.toml" restore data latest --identity "$BKW/identity.age" --to "$RESTORED"
}

# ------------------------------------------------------------------- 4b. shell pipeline
# The same payload format bk writes (age ∘ zstd ∘ tar), built from the stock tools:
# this is the speed bk's streaming pipeline should match.
SH=$OUT/shell
CIPHER=$SH/data.tar.zst.age
step_shell_backup() {
    measure shell backup "$CIPHER" shell-backup.log 'fresh "$SH"' -- \
        bash -o pipefail -c 'tar cf - -C "$1" . | zstd -q -"$2" -T0 | age -r "$3" >"$4"' \
        _ "$DATA" "$LEVEL" "$RECIPIENT" "$CIPHER"
}
# The same, and then `sync FILE` (fsync): bk makes what it stored durable before it
# commits it, and the plain pipeline leaves its output to the kernel's writeback, after
# the clock stops. Shown beside the reference, not instead of it.
step_shell_backup_synced() {
    measure "shell + fsync" backup "$CIPHER" shell-backup-synced.log 'fresh "$SH"' -- \
        bash -o pipefail -c 'tar cf - -C "$1" . | zstd -q -"$2" -T0 | age -r "$3" >"$4" && sync "$4"' \
        _ "$DATA" "$LEVEL" "$RECIPIENT" "$CIPHER"
}
step_shell_verify() {
    measure shell "$VERIFY" - shell-verify.log : -- \
        bash -o pipefail -c 'age -d -i "$1" "$2" | zstd -q -d | tar tf - >/dev/null' \
        _ "$BKW/identity.age" "$CIPHER"
}
step_shell_restore() {
    measure shell "$RESTORE" - shell-restore.log 'fresh "$RESTORED"' -- \
        bash -o pipefail -c 'age -d -i "$1" "$2" | zstd -q -d | tar xf - -C "$3"' \
        _ "$BKW/identity.age" "$CIPHER" "$RESTORED"
}

# ------------------------------------------------------------------------ 4c. peers
# restic: a fresh repository (and cache) for every run, so the backup is a full one.
# Debian 12 ships restic 0.14: repository format v2, compression "auto" (zstd's
# fastest level) by default. `restic init` is not timed.
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$OUT/restic-cache
restic_fresh() {
    rm -rf "$OUT/restic" "$RESTIC_CACHE_DIR"
    restic -r "$OUT/restic" init >"$LOGS/restic-init.log" 2>&1 \
        || die "restic init failed (see $LOGS/restic-init.log)"
}
step_restic_backup() {
    measure restic backup "$OUT/restic" restic-backup.log restic_fresh -- \
        restic -r "$OUT/restic" backup --quiet "$DATA"
}
step_restic_restore() {
    measure restic "$RESTORE" - restic-restore.log 'fresh "$RESTORED"' -- \
        restic -r "$OUT/restic" restore latest --quiet --target "$RESTORED"
}

# borg 1.2: authenticated encryption with the key in the repository, zstd at the same
# level as bk. BORG_BASE_DIR keeps its cache and security files out of $HOME, and
# fresh for every run. `borg init` is not timed.
export BORG_PASSPHRASE=bench BORG_BASE_DIR=$OUT/borg-home
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
borg_fresh() {
    rm -rf "$OUT/borg" "$BORG_BASE_DIR"
    borg init --encryption=repokey-blake2 "$OUT/borg" >"$LOGS/borg-init.log" 2>&1 \
        || die "borg init failed (see $LOGS/borg-init.log)"
}
# Run from inside the data set so archived paths are relative (./…), as with tar.
step_borg_backup() {
    measure borg backup "$OUT/borg" borg-backup.log borg_fresh -- \
        bash -c 'cd "$1" && borg create --compression "zstd,$2" "$3::bench" .' \
        _ "$DATA" "$LEVEL" "$OUT/borg"
}
step_borg_restore() {
    measure borg "$RESTORE" - borg-restore.log 'fresh "$RESTORED"' -- \
        bash -c 'cd "$1" && borg extract "$2::bench"' _ "$RESTORED" "$OUT/borg"
}

# ------------------------------------------ 4d. the steps, each round every tool in turn
BACKUPS=(step_bk_backup step_shell_backup step_shell_backup_synced)
RESTORES=(step_bk_restore step_shell_restore)
if [[ $PEERS == 1 ]]; then
    BACKUPS+=(step_restic_backup step_borg_backup)
    RESTORES+=(step_restic_restore step_borg_restore)
fi
rounds "${BACKUPS[@]}"
python3 - "$LOGS/bk-backup.json" >&2 <<'EOF' || die "bk run --json did not print the expected JSON (see $LOGS/bk-backup.json)"
import json, sys
doc = json.load(open(sys.argv[1]))
print("bench: bk backup %s: source %d bytes, stored %d bytes"
      % (doc["backup_id"], doc["source_size"], doc["stored_size"]))
EOF
# Each tool's repository now holds the backup of its last round.
rounds step_bk_verify step_shell_verify
rounds "${RESTORES[@]}"
rm -rf "$RESTORED" "$SH" "$OUT/restic" "$RESTIC_CACHE_DIR" "$OUT/borg" "$BORG_BASE_DIR"

# free_port: a TCP port on 127.0.0.1 nobody listens on right now.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_port PORT WHAT: until something accepts connections on 127.0.0.1:PORT (20 s).
wait_port() {
    local i
    for ((i = 0; i < 200; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "$2 did not start listening on 127.0.0.1:$1 (see $LOGS)"
}

# ------------------------------------------------------------- 4d. the same over SSH
# A loopback sshd stands in for the source host: bk pulls the data set with a
# `directory` job on an SSH host, the shell with `ssh SRC 'tar cf - DIR' | zstd | age`.
# Both use the system OpenSSH client with its default cipher; root logs in with a key.
if [[ $SSH == 1 ]]; then
    SSHW=$OUT/ssh
    rm -rf "$SSHW" && mkdir -p "$SSHW" && chmod 700 "$SSHW"
    ssh-keygen -q -t ed25519 -N '' -C bk-bench-host -f "$SSHW/host_key"
    ssh-keygen -q -t ed25519 -N '' -C bk-bench-client -f "$SSHW/client_key"
    cp "$SSHW/client_key.pub" "$SSHW/authorized_keys"
    SSH_PORT=$(free_port)
    cat >"$SSHW/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSHW/host_key
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AuthorizedKeysFile $SSHW/authorized_keys
MaxSessions 16
EOF
    mkdir -p /run/sshd && chmod 755 /run/sshd
    /usr/sbin/sshd -D -e -f "$SSHW/sshd_config" 2>"$LOGS/sshd.log" &
    CLEANUP+=("kill $!")
    wait_port "$SSH_PORT" sshd
    echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$SSHW/host_key.pub")" >"$SSHW/known_hosts"
    cat >>"$BKW/bk.toml" <<EOF

[hosts.src]
address = "127.0.0.1"
port = $SSH_PORT
user = "root"
key = "$SSHW/client_key"
known_hosts = "$SSHW/known_hosts"

[jobs.remote]
host = "src"
kind = "directory"
path = "$DATA"
EOF
    SSH_OP="backup over SSH"
    step_bk_ssh() {
        measure bk "$SSH_OP" "$BKW/repo" bk-ssh-backup.log \
            'rm -rf "$BKW/repo" "$BKW"/catalog.db* && mkdir "$BKW/repo"' -- \
            "$BK" --config "$BKW/bk.toml" run remote
    }
    step_shell_ssh() {
        measure shell "$SSH_OP" "$SH/ssh.tar.zst.age" shell-ssh-backup.log 'fresh "$SH"' -- \
            bash -o pipefail -c 'ssh -i "$1" -p "$2" -o UserKnownHostsFile="$3" -o StrictHostKeyChecking=yes \
                -o BatchMode=yes root@127.0.0.1 "$4" | zstd -q -"$5" -T0 | age -r "$6" >"$7"' \
            _ "$SSHW/client_key" "$SSH_PORT" "$SSHW/known_hosts" "tar cf - -C $DATA ." "$LEVEL" "$RECIPIENT" \
            "$SH/ssh.tar.zst.age"
    }
    rounds step_bk_ssh step_shell_ssh
    rm -rf "$SH"
fi

# -------------------------------------------------------------------- 4e. PostgreSQL
# A throwaway PostgreSQL cluster (run as the postgres user) with a pgbench database of
# scale $DB_SCALE. bk runs a `postgres` job on the local host (allow_primary: there is
# no replica here), which besides pg_dump also checks the server, dumps the globals
# and counts every table's rows; the shell runs `pg_dump -Fc -Z0 | zstd | age`.
if ((DB_SCALE > 0)); then
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    [[ -x $PGBIN/initdb ]] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
    PGW=$(mktemp -d /tmp/bk-bench-pg.XXXXXX)
    chown postgres: "$PGW"
    PG_PORT=$(free_port)
    pg() { runuser -u postgres -- "$@"; }
    pg "$PGBIN/initdb" -D "$PGW/data" -A trust -U postgres >"$LOGS/pg-initdb.log" 2>&1 \
        || die "initdb failed (see $LOGS/pg-initdb.log)"
    pg "$PGBIN/pg_ctl" -D "$PGW/data" -l "$PGW/server.log" -w \
        -o "-p $PG_PORT -k $PGW -c listen_addresses='' -c fsync=off" start >"$LOGS/pg-start.log" 2>&1 \
        || die "PostgreSQL did not start (see $PGW/server.log)"
    CLEANUP+=("runuser -u postgres -- '$PGBIN/pg_ctl' -D '$PGW/data' -m immediate stop >/dev/null 2>&1; rm -rf '$PGW'")
    say "postgres: pgbench -i -s $DB_SCALE (not timed)"
    pg "$PGBIN/createdb" -h "$PGW" -p "$PG_PORT" bench
    pg "$PGBIN/pgbench" -i -q -s "$DB_SCALE" -h "$PGW" -p "$PG_PORT" bench >"$LOGS/pgbench.log" 2>&1 \
        || die "pgbench -i failed (see $LOGS/pgbench.log)"
    PGDUMP="$PGBIN/pg_dump"
    DB_BYTES=$("$PGDUMP" -Fc -Z0 -h "$PGW" -p "$PG_PORT" -U postgres bench | wc -c)
    say "postgres: the uncompressed custom-format dump is $DB_BYTES bytes"
    cat >>"$BKW/bk.toml" <<EOF

[jobs.db]
kind = "postgres"
database = "bench"
conninfo = "host=$PGW port=$PG_PORT user=postgres"
allow_primary = true
EOF
    DB_OP="backup of a database (pg_dump)"
    step_bk_db() {
        STEP_BYTES=$DB_BYTES measure bk "$DB_OP" "$BKW/repo" bk-db-backup.log \
            'rm -rf "$BKW/repo" "$BKW"/catalog.db* && mkdir "$BKW/repo"' -- \
            env PATH="$PGBIN:$PATH" "$BK" --config "$BKW/bk.toml" run db
    }
    step_shell_db() {
        STEP_BYTES=$DB_BYTES measure shell "$DB_OP" "$OUT/db.dump.zst.age" shell-db-backup.log : -- \
            bash -o pipefail -c '"$1" -Fc -Z0 -h "$2" -p "$3" -U postgres bench | zstd -q -"$4" -T0 | age -r "$5" >"$6"' \
            _ "$PGDUMP" "$PGW" "$PG_PORT" "$LEVEL" "$RECIPIENT" "$OUT/db.dump.zst.age"
    }
    rounds step_bk_db step_shell_db
    rm -f "$OUT/db.dump.zst.age"
fi

# ------------------------------------------------------------ 4f. a long stream: memory
# A $BIG_GB GiB stream (the data set's tar, repeated) through a `command` job, backed up
# and then restored with --verify, once each: peak RSS must not grow with the stream.
if ((BIG_GB > 0)); then
    BIG_BYTES=$((BIG_GB << 30))
    cat >"$OUT/stream.sh" <<EOF
#!/bin/bash
# $BIG_GB GiB: the data set's tar stream, over and over, cut at the size.
for ((i = 0; i <= $BIG_BYTES / $DATA_BYTES; i++)); do tar cf - -C "$DATA" .; done | head -c $BIG_BYTES
EOF
    chmod 755 "$OUT/stream.sh"
    cat >>"$BKW/bk.toml" <<EOF

[jobs.big]
kind = "command"
command = "$OUT/stream.sh"
EOF
    BIG_OP="backup of a $BIG_GB GiB stream"
    STEP_BYTES=$BIG_BYTES measure bk "$BIG_OP" "$BKW/repo" bk-big-backup.log \
        'rm -rf "$BKW/repo" "$BKW"/catalog.db* && mkdir "$BKW/repo"' -- \
        "$BK" --config "$BKW/bk.toml" run big
    STEP_BYTES=$BIG_BYTES measure bk "restore --verify of a $BIG_GB GiB stream" - bk-big-verify.log : -- \
        "$BK" --config "$BKW/bk.toml" restore big latest --identity "$BKW/identity.age" --verify
    rm -rf "$BKW/repo"
fi

# ------------------------------------------------------------------------- 4g. scale
if [[ $SCALE == 1 ]]; then
    say "scale: bench/scale.sh"
    BK=$BK BK_SERVER=$BK_SERVER bash "$BENCH_DIR/scale.sh" "$OUT/scale" >&2 \
        || die "bench/scale.sh failed"
else
    rm -f "$OUT/scale/scale.md"
fi

# ----------------------------------------------------------------------------- 5. report
versions() {
    local rev
    rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')
    (cd "$ROOT" && git diff --quiet HEAD -- core client Cargo.lock 2>/dev/null) \
        || rev="$rev + uncommitted changes in core/ or client/"
    [[ -z ${BENCH_BK:-} ]] || rev="prebuilt binary $BENCH_BK"
    echo "- bk: $rev; zstd level $LEVEL, $WORKERS workers"
    echo "- $(zstd --version 2>&1 | head -n1)"
    echo "- age $(age --version 2>&1 | head -n1)"
    echo "- $(tar --version | head -n1)"
    [[ $SSH == 0 ]] || echo "- $(ssh -V 2>&1 | head -n1)"
    ((DB_SCALE == 0)) || echo "- $("$PGBIN/pg_dump" --version)"
    if [[ $PEERS == 1 ]]; then
        echo "- $(restic version 2>&1 | head -n1) (repository v2, compression auto)"
        echo "- $(borg --version 2>&1 | head -n1) (repokey-blake2, zstd,$LEVEL)"
    fi
    echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores; $(uname -sr)"
}
python3 - "$ROWS" "$DATA_BYTES" "$DATA_FILES" "$SIZE_MB" "$RUNS" "$OUT/results.md" \
    "$(versions)" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$OUT/scale/scale.md" <<'EOF'
import os, statistics, sys

rows_path, data_bytes, files, size_mb, runs, out_path, versions, when, scale = sys.argv[1:]
data_bytes, files, runs = int(data_bytes), int(files), int(runs)

# All runs of each (tool, operation), in the order they ran.
steps = {}
for line in open(rows_path):
    tool, op, run, wall, user, sys_, rss, size, other, nbytes = line.rstrip("\n").split("\t")
    steps.setdefault((tool, op), []).append(dict(
        tool=tool, op=op, wall=float(wall), cpu=float(user) + float(sys_),
        rss=int(rss) / 1024, size=None if size == "-" else int(size) / 2**20,
        other=float(other), bytes=int(nbytes)))

# Keep the median run by wall time (the lower median for an even count), and its spread.
rows = []
for (tool, op), all_runs in steps.items():
    walls = sorted(r["wall"] for r in all_runs)
    median = statistics.median_low(walls)
    r = dict(next(r for r in all_runs if r["wall"] == median))
    r["spread"] = "%.2f–%.2f" % (walls[0], walls[-1]) if len(walls) > 1 else "-"
    r["rss"] = max(x["rss"] for x in all_runs)  # peak over all runs
    rows.append(r)

def mbps(r):
    return r["bytes"] / 1e6 / max(r["wall"], 0.001)

def find(tool, op):
    return next((r for r in rows if r["tool"] == tool and r["op"] == op), None)

def versus(r):
    if r["tool"] == "shell":
        return "reference"
    if r["tool"] == "bk":
        sh = find("shell", r["op"])
        return "%.2f× shell" % (mbps(r) / mbps(sh)) if sh else ""
    bk = find("bk", r["op"])
    if not bk:
        return ""
    x = mbps(bk) / mbps(r)
    return "bk is %.2f× faster" % x if x >= 1 else "bk is %.2f× slower" % (1 / x)

# Operations in the order they ran; tools in a fixed order within each.
order = {}
for (tool, op) in steps:
    order.setdefault(op, len(order))
tools = {"bk": 0, "shell": 1, "shell + fsync": 2, "restic": 3, "borg": 4}
rows.sort(key=lambda r: (order[r["op"]], tools.get(r["tool"], 9)))

head = ["tool", "operation", "MB/s", "wall s", "wall range s", "CPU s", "peak RSS MiB",
        "output MiB", "vs shell / vs bk", "other CPU s"]
table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for r in rows:
    table.append("| " + " | ".join([
        r["tool"], r["op"], "%.0f" % mbps(r), "%.2f" % r["wall"], r["spread"],
        "%.1f" % r["cpu"], "%.0f" % r["rss"],
        "-" if r["size"] is None else "%.0f" % r["size"], versus(r),
        "%.1f" % r["other"]]) + " |")

md = "\n".join([
    "# bk benchmark results",
    "",
    "%s. Data set: %d files, %.0f MB (%.0f MiB, BENCH_SIZE_MB=%s), ~60%% incompressible, "
    "~40%% text; read from page cache. Each step ran %d time(s); the table shows the "
    "median run." % (when, files, data_bytes / 1e6, data_bytes / 2**20, size_mb, runs),
    "",
    *table,
    "",
    "- MB/s = input size (10^6 bytes) / wall time of the median run: the data set for "
    "backups and restores of it, the uncompressed custom-format dump (`pg_dump -Fc -Z0`) "
    "for the database, the stream's size for the long stream. CPU s = user + "
    "system, children included. Peak RSS: highest over the runs; for a shell pipeline it "
    "is the largest single process, not the sum. Output = repository or file size "
    "(apparent bytes).",
    "- `verify` reads, decrypts and decompresses everything and writes nothing: bk "
    "`restore --verify` (which also checks every hash against the manifest) vs "
    "`age -d | zstd -d | tar tf -`. `restore to directory` writes every file.",
    "- bk rows compare with the shell row of the same operation (MB/s ratio); restic and "
    "borg rows compare bk's MB/s with theirs for the same operation.",
    "- other CPU s = CPU time the rest of the machine used during that run (system busy "
    "time minus the step's own). Above ~1 s, the step competed for the 2 cores and its "
    "numbers are pessimistic.",
    "",
    "Versions:",
    "",
    versions,
    "",
])
if os.path.exists(scale):
    md += "\n" + open(scale).read()
open(out_path, "w").write(md)
print(md)
EOF
say "results written to $OUT/results.md"
