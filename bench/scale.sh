#!/usr/bin/env bash
# bk at scale: listing a repository of many backups, and many jobs run concurrently by
# the daemon against several SSH hosts. Writes OUTDIR/scale.md (a Markdown fragment
# starting with "## Scale") and prints it. Usage and variables: bench/README.md.
#
#   BK=target/bench/release/bk BK_SERVER=target/bench/release/bk-server bash bench/scale.sh OUTDIR
#   SCALE_BACKUPS=2000 SCALE_JOBS=10 SCALE_HOSTS=3 BK=… BK_SERVER=… bash bench/scale.sh /tmp/scale
#
# Part 1 generates a file:// repository of SCALE_BACKUPS committed backups over
# SCALE_JOBS jobs (bench/scale_repo.py, commit records copied from one real backup made
# here with `bk run`) and times `bk list`, `bk list JOB`, `bk list --json` without a
# catalog, then `bk catalog rebuild`, then the same listings plus `bk status` and
# `bk status --json` with the warm catalog, each under GNU time (wall s, peak RSS).
#
# Part 2 starts a throwaway sshd on a free loopback port, configures SCALE_HOSTS hosts
# (all that sshd, max_jobs each) and SCALE_JOBS command jobs over them, starts
# bk-server with max_concurrent_jobs, waits until every job has finished one run, stops
# it with SIGTERM and reads from the catalog how many runs overlapped, globally and per
# host, against the configured limits.
#
# Runs as root (sshd, and Part 2 logs in as root). Needs python3, GNU time, openssh-server
# and openssh-client.
set -euo pipefail

# ---------------------------------------------------------------------------- settings
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)

die() { echo "scale: error: $*" >&2; exit 1; }
say() { echo "scale: $*" >&2; }

[[ $# == 1 && -n $1 ]] || die "usage: BK=path/to/bk BK_SERVER=path/to/bk-server bash bench/scale.sh OUTDIR"
mkdir -p "$1" || die "cannot create the output directory $1"
OUT=$(cd "$1" && pwd)

BK=${BK:-}
BK_SERVER=${BK_SERVER:-}
BACKUPS=${SCALE_BACKUPS:-100000}
JOBS=${SCALE_JOBS:-50}
HOSTS=${SCALE_HOSTS:-10}
DUMP_MB=${SCALE_DUMP_MB:-48}             # what each Part 2 job streams, MiB
MAX_CONCURRENT=${SCALE_MAX_CONCURRENT:-4} # [server] max_concurrent_jobs
HOST_MAX_JOBS=${SCALE_HOST_MAX_JOBS:-2}   # [hosts.NAME] max_jobs
RUNS=${SCALE_RUNS:-3}                     # Part 1: runs of each command (median shown)…
RUN_BUDGET=${SCALE_RUN_BUDGET:-4}         # …but no further run once its runs took this many s
TIMEOUT=${SCALE_TIMEOUT:-600}             # Part 2: max seconds for every job to finish a run
REPO_PARENT=${SCALE_REPO_DIR:-}           # where Part 1's repository goes (default below)
QUIET_WAIT=${SCALE_QUIET_WAIT:-5}         # max s to wait for an idle machine before a measurement
TARGET_S=1                                # "answers in under a second"

[[ -n $BK ]] || die "set BK to the bk binary (e.g. BK=target/bench/release/bk)"
[[ -n $BK_SERVER ]] || die "set BK_SERVER to the bk-server binary (e.g. BK_SERVER=target/bench/release/bk-server)"
[[ -x $BK ]] || die "BK=$BK is not an executable file"
[[ -x $BK_SERVER ]] || die "BK_SERVER=$BK_SERVER is not an executable file"
BK=$(cd "$(dirname "$BK")" && pwd)/$(basename "$BK")
BK_SERVER=$(cd "$(dirname "$BK_SERVER")" && pwd)/$(basename "$BK_SERVER")
for v in BACKUPS JOBS HOSTS DUMP_MB MAX_CONCURRENT HOST_MAX_JOBS RUNS RUN_BUDGET TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "SCALE_$v must be a positive integer (got '${!v}')"
done
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "SCALE_QUIET_WAIT must be a number of seconds (got '$QUIET_WAIT')"
((JOBS <= BACKUPS)) || die "SCALE_BACKUPS ($BACKUPS) must be at least SCALE_JOBS ($JOBS)"
[[ $(id -u) == 0 ]] || die "run as root: Part 2 starts sshd and logs in to it as root"
for tool in /usr/bin/time python3 /usr/sbin/sshd ssh ssh-keygen; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool not found (Debian packages: time, python3, openssh-server, openssh-client)"
done

W=$OUT/scale-work   # scratch: repositories, catalogs, keys, logs (removed at the next run)
LOGS=$W/logs
MD=$OUT/scale.md
rm -rf "$W"
mkdir -p "$LOGS"
chmod 700 "$W"

# Part 1's repository: 300,000 small files. On this kind of VM disk, writing them took
# 60-110 s and deleting them another 60 s, so by default they go to tmpfs (/dev/shm,
# when it has 2 GiB free), where they take 6 s. Listing from tmpfs was about 15%
# faster than from ext4 with everything in the page cache. Removed after Part 1.
if [[ -z $REPO_PARENT ]]; then
    REPO_PARENT=$W
    if [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]] \
        && (($(df -Pk /dev/shm | awk 'NR == 2 {print $4}') > 2 * 1024 * 1024)); then
        REPO_PARENT=/dev/shm
    fi
fi
[[ -d $REPO_PARENT ]] || die "SCALE_REPO_DIR=$REPO_PARENT is not a directory"
REPO=

# ------------------------------------------------------------------------ clean-up
SSHD_PID=
TIME_PID=
DAEMON_PID=
cleanup() {
    local rc=$?
    [[ -z $REPO ]] || rm -rf "$REPO"
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
    [[ -z $TIME_PID ]] || wait "$TIME_PID" 2>/dev/null || true
    if [[ -n $SSHD_PID ]] && kill -0 "$SSHD_PID" 2>/dev/null; then
        kill -TERM "$SSHD_PID" 2>/dev/null || true
        wait "$SSHD_PID" 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------ measurement
# CPU jiffies the whole machine has spent busy; minus a step's own CPU, what *others* took.
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
HZ=$(getconf CLK_TCK)
TIMEF=$W/.time

# quiet: wait (at most $QUIET_WAIT s) for a second in which the machine is nearly idle
# (under a fifth of a core busy), so a measurement does not start in the middle of
# somebody else's build. What other processes took anyway shows as "other CPU".
quiet() {
    local waited=0 b0 b1
    while ((waited < QUIET_WAIT)); do
        b0=$(busy); sleep 1; b1=$(busy)
        (((b1 - b0) * 5 < HZ)) && return 0
        waited=$((waited + 1))
    done
    ((QUIET_WAIT == 0)) || say "the machine is still busy after ${QUIET_WAIT}s; measuring anyway"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# measure NAME CATALOG STDOUT -- COMMAND...: runs COMMAND under GNU time $RUNS times, or
# fewer once its runs together took $RUN_BUDGET s (100,000 backups make some commands
# slow, and the whole script should stay near 3 minutes); stdout to STDOUT, stderr to a
# log. One row per run in $ROWS.
ROWS=$W/rows.tsv
: >"$ROWS"
measure() {
    local name=$1 catalog=$2 stdout=$3 run wall user sys rss b0 b1 other log spent=0
    [[ $4 == -- ]] || die "measure: expected -- before the command"
    shift 4
    log=$LOGS/$(echo "$name-$catalog" | tr -c 'A-Za-z0-9\n-' '_').err
    for ((run = 1; run <= RUNS; run++)); do
        if ((run > 1)) && awk -v s="$spent" -v b="$RUN_BUDGET" 'BEGIN {exit !(s >= b)}'; then
            break
        fi
        say "part 1: $name ($catalog) run $run/$RUNS"
        quiet
        b0=$(busy)
        if ! /usr/bin/time -o "$TIMEF" -f '%e %U %S %M' "$@" >"$stdout" 2>"$log"; then
            tail -n 20 "$log" >&2
            die "'$name' ($catalog) failed: $* (stderr in $log)"
        fi
        b1=$(busy)
        read -r wall user sys rss <"$TIMEF"
        other=$(awk -v b="$((b1 - b0))" -v hz="$HZ" -v u="$user" -v s="$sys" \
            'BEGIN {o = b / hz - u - s; printf "%.1f", (o < 0 ? 0 : o)}')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$catalog" "$run" "$wall" \
            "$(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}')" "$rss" "$other" >>"$ROWS"
        spent=$(awk -v s="$spent" -v w="$wall" 'BEGIN {print s + w}')
    done
}

# ===================================================================== Part 1: listing
P1=$W/list
mkdir -p "$P1/template/repo"
RECIPIENT=$("$BK" keygen --output "$W/identity.age" 2>"$LOGS/keygen.err" | grep -m1 '^age1') \
    || die "bk keygen printed no age1… recipient (see $LOGS/keygen.err)"

# One real backup: its commit record and marker are the templates of all others.
cat >"$P1/template/bk.toml" <<EOF
[repository]
url = "file://$P1/template/repo"
recipients = ["$RECIPIENT"]

[catalog]
path = "$P1/template/catalog.db"

[jobs.template]
kind = "command"
command = "printf 'scale benchmark template\\\\n'"
EOF
say "part 1: one real backup as the template"
"$BK" --config "$P1/template/bk.toml" run template --json >"$LOGS/template-run.json" 2>"$LOGS/template-run.err" \
    || die "the template backup (bk run template) failed (see $LOGS/template-run.err)"
TEMPLATE=$(find "$P1/template/repo/backups/template" -name commit.json | head -n1)
[[ -n $TEMPLATE ]] || die "bk run template reported success but wrote no commit.json under $P1/template/repo"

REPO=$(mktemp -d "$REPO_PARENT/bk-scale-repo.XXXXXX") || die "cannot create a directory in $REPO_PARENT"
REPO_FS=$(stat -f -c %T "$REPO")
say "part 1: generating $BACKUPS committed backups of $JOBS jobs in $REPO ($REPO_FS)"
gen_start=$(date +%s.%N)
python3 "$BENCH_DIR/scale_repo.py" "$P1/template/repo" "$TEMPLATE" "$REPO" "$BACKUPS" "$JOBS" job \
    2>"$LOGS/generate.err" || die "bench/scale_repo.py failed (see $LOGS/generate.err)"
GEN_S=$(awk -v a="$gen_start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
JOB_DIRS=("$REPO/backups"/*)
((${#JOB_DIRS[@]} == JOBS)) || die "bench/scale_repo.py made ${#JOB_DIRS[@]} job folders, expected $JOBS"
JOB1=$(basename "${JOB_DIRS[0]}")
JOB1_COUNT=$(find "$REPO/backups/$JOB1" -name commit.json | wc -l)

{
    cat <<EOF
[repository]
url = "file://$REPO"
recipients = ["$RECIPIENT"]

[catalog]
path = "$P1/catalog.db"
EOF
    for dir in "${JOB_DIRS[@]}"; do
        job=$(basename "$dir")
        printf '\n[jobs.%s]\nkind = "command"\ncommand = "true"\nschedule = "0 3 * * *"\n' "$job"
    done
} >"$P1/bk.toml"
C1=(--config "$P1/bk.toml")

# count_json FILE: number of entries in a `bk list --json` document.
count_json() { python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$1"; }

# No catalog: every commit record is read from the repository (bk list never creates one).
[[ ! -e $P1/catalog.db ]] || die "$P1/catalog.db exists before the first listing"
measure "bk list" none /dev/null -- "$BK" "${C1[@]}" list
measure "bk list $JOB1" none /dev/null -- "$BK" "${C1[@]}" list "$JOB1"
measure "bk list --json" none "$LOGS/list-cold.json" -- "$BK" "${C1[@]}" list --json
[[ ! -e $P1/catalog.db ]] || die "bk list created $P1/catalog.db; the 'no catalog' rows would not be cold"
n=$(count_json "$LOGS/list-cold.json")
[[ $n == "$BACKUPS" ]] || die "bk list --json (no catalog) listed $n backups, expected $BACKUPS"

# What walking the repository alone costs: object_store's local store stats every file
# it lists, as find -printf '%s %T@' does.
measure "find REPO -type f" "-" /dev/null -- find "$REPO" -type f -printf '%p %s %T@\n'
measure "bk catalog rebuild" "none → built" "$LOGS/rebuild.out" -- "$BK" "${C1[@]}" catalog rebuild
grep -q ": $BACKUPS committed backup" "$LOGS/rebuild.out" \
    || die "bk catalog rebuild did not report $BACKUPS backups: $(cat "$LOGS/rebuild.out")"

measure "bk list" warm /dev/null -- "$BK" "${C1[@]}" list
measure "bk list $JOB1" warm "$LOGS/list-job.txt" -- "$BK" "${C1[@]}" list "$JOB1"
n=$(($(wc -l <"$LOGS/list-job.txt") - 1))
[[ $n == "$JOB1_COUNT" ]] || die "bk list $JOB1 listed $n backups, expected $JOB1_COUNT"
measure "bk list --json" warm "$LOGS/list-warm.json" -- "$BK" "${C1[@]}" list --json
n=$(count_json "$LOGS/list-warm.json")
[[ $n == "$BACKUPS" ]] || die "bk list --json (warm catalog) listed $n backups, expected $BACKUPS"
measure "bk status" warm "$LOGS/status.txt" -- "$BK" "${C1[@]}" status
measure "bk status --json" warm "$LOGS/status.json" -- "$BK" "${C1[@]}" status --json
python3 - "$LOGS/status.json" "$JOBS" <<'EOF' || die "bk status --json does not show a last good backup for each of the $JOBS jobs (see $LOGS/status.json)"
import json, sys
doc = json.load(open(sys.argv[1]))
jobs = doc["jobs"]
assert len(jobs) == int(sys.argv[2]), len(jobs)
assert all(j["last_good_backup"] for j in jobs)
EOF
REPO_MB=$(du -sm "$REPO" | cut -f1)
REPO_FILES=$(find "$REPO" -type f | wc -l)
rm -rf "$REPO"   # before Part 2, not to hold the memory (tmpfs) any longer
REPO=

# ============================================================ Part 2: jobs via the daemon
P2=$W/daemon
mkdir -p "$P2/repo"
ssh-keygen -q -t ed25519 -N '' -C bk-scale-host -f "$P2/host_ed25519" \
    || die "ssh-keygen (host key) failed"
ssh-keygen -q -t ed25519 -N '' -C bk-scale-client -f "$P2/client_ed25519" \
    || die "ssh-keygen (client key) failed"
cp "$P2/client_ed25519.pub" "$P2/authorized_keys"
chmod 600 "$P2/authorized_keys"
SSH_PORT=$(free_port)
LISTEN_PORT=$(free_port)
[[ $SSH_PORT != "$LISTEN_PORT" ]] || LISTEN_PORT=$(free_port)
cat >"$P2/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $P2/host_ed25519
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AuthorizedKeysFile $P2/authorized_keys
AllowUsers root
MaxSessions 64
MaxStartups 100
LogLevel INFO
EOF
read -r kt key _ <"$P2/host_ed25519.pub"
echo "[127.0.0.1]:$SSH_PORT $kt $key" >"$P2/known_hosts"
mkdir -p /run/sshd && chmod 755 /run/sshd   # sshd's privilege separation directory
say "part 2: starting sshd on 127.0.0.1:$SSH_PORT"
/usr/sbin/sshd -D -e -f "$P2/sshd_config" </dev/null >"$LOGS/sshd.log" 2>&1 &
SSHD_PID=$!
up=0
for _ in $(seq 100); do
    kill -0 "$SSHD_PID" 2>/dev/null || die "sshd exited at start: $(tail -n 5 "$LOGS/sshd.log")"
    if ssh -q -i "$P2/client_ed25519" -p "$SSH_PORT" -o BatchMode=yes -o IdentitiesOnly=yes \
        -o UserKnownHostsFile="$P2/known_hosts" -o GlobalKnownHostsFile=/dev/null \
        -o StrictHostKeyChecking=yes -o ConnectTimeout=2 -F /dev/null root@127.0.0.1 true \
        2>"$LOGS/ssh-check.err"; then
        up=1
        break
    fi
    sleep 0.1
done
((up)) || die "cannot log in to the test sshd as root (ssh: $(tail -n 2 "$LOGS/ssh-check.err"); sshd: $(tail -n 3 "$LOGS/sshd.log"))"

DUMP_BYTES=$((DUMP_MB * 1048576))
SEQ_LINES=$((DUMP_BYTES / 2 / 64))   # about half numbered log lines, half a repeated line
SOURCE="{ seq -f 'ts=%.0f level=info msg=\\\"GET /api/v1/items\\\" status=200 ms=12' 1 $SEQ_LINES; yes 'level=debug msg=\\\"cache hit\\\" key=user:12345 node=app-3'; } | head -c $DUMP_BYTES"
: >"$P2/job-hosts.tsv"
{
    cat <<EOF
[repository]
url = "file://$P2/repo"
recipients = ["$RECIPIENT"]

[catalog]
path = "$P2/catalog.db"

[server]
listen = "127.0.0.1:$LISTEN_PORT"
max_concurrent_jobs = $MAX_CONCURRENT
shutdown_grace = "10s"
EOF
    for ((h = 1; h <= HOSTS; h++)); do
        cat <<EOF

[hosts.h$h]
address = "127.0.0.1"
port = $SSH_PORT
user = "root"
key = "$P2/client_ed25519"
known_hosts = "$P2/known_hosts"
max_jobs = $HOST_MAX_JOBS
EOF
    done
    # Round-robin over the hosts, each job named after its host (h1-job001, h1-job011,
    # …, h2-job002, …). The daemon starts due jobs in name order, so the first runs to
    # ask for slots come several per host and max_jobs has work to do; with the names in
    # round-robin order (job001 on h1, job002 on h2, …) and fewer global slots than
    # hosts, no host would ever be asked for a second run at once.
    for ((j = 1; j <= JOBS; j++)); do
        host=h$(((j - 1) % HOSTS + 1))
        name=$(printf '%s-job%03d' "$host" "$j")
        printf '%s\t%s\n' "$name" "$host" >>"$P2/job-hosts.tsv"
        cat <<EOF

[jobs.$name]
kind = "command"
host = "$host"
command = "$SOURCE"
schedule = "0 3 * * *"
catch_up = true
EOF
    done
} >"$P2/bk.toml"
C2=(--config "$P2/bk.toml")
"$BK" "${C2[@]}" config check --offline >"$LOGS/config-check.log" 2>&1 \
    || die "bk config check rejected the Part 2 configuration $P2/bk.toml (see $LOGS/config-check.log)"

# Every job due at once. catch_up starts a job at start-up only when its last run in the
# catalog is older than a scheduled time already past; a job that never ran is not
# caught up (docs/schedules.md). So the new catalog gets one run per job, marked
# interrupted on 2000-01-01 with trigger "bench-seed": to the daemon, each job missed
# last night's 03:00 run while it was down, and all catch up at start. Seed rows are
# left out of every figure below.
"$BK" "${C2[@]}" status --json >/dev/null 2>"$LOGS/catalog-create.err" \
    || die "bk status could not create the catalog $P2/catalog.db (see $LOGS/catalog-create.err)"
python3 - "$P2/catalog.db" "$P2/job-hosts.tsv" <<'EOF' || die "seeding the catalog $P2/catalog.db with one past run per job failed (see the Python error above)"
import socket, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
cols = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
need = {"job", "started", "finished", "status", "error", "trigger", "writer", "pid"}
if not need <= cols:
    sys.exit("the catalog's runs table lacks columns %s (has %s)" % (sorted(need - cols), sorted(cols)))
jobs = [line.split("\t")[0] for line in open(sys.argv[2]) if line.strip()]
with db:
    db.executemany(
        "INSERT INTO runs (job, started, finished, status, error, trigger, writer, pid) "
        "VALUES (?, '2000-01-01T00:00:00+00:00', '2000-01-01T00:00:00+00:00', 'interrupted', "
        "'bench/scale.sh seed: a run missed while the daemon was down', 'bench-seed', ?, 0)",
        [(j, socket.gethostname()) for j in jobs])
EOF

# status_done: how many jobs have finished a run the daemon started (not the seed).
status_done() {
    "$BK" "${C2[@]}" status --json 2>>"$LOGS/poll.err" | python3 -c '
import json, sys
doc = json.load(sys.stdin)
done = sum(1 for j in doc["jobs"]
           if j["last_run"] and j["last_run"]["trigger"] != "bench-seed" and j["last_run"]["finished"])
print(done)'
}

say "part 2: starting bk-server ($JOBS jobs of $DUMP_MB MiB over $HOSTS hosts, max_concurrent_jobs = $MAX_CONCURRENT, max_jobs = $HOST_MAX_JOBS per host)"
DAEMON_TIMEF=$W/.daemon-time
quiet
b0=$(busy)
t0=$(date +%s.%N)
/usr/bin/time -o "$DAEMON_TIMEF" -f '%e %U %S %M' "$BK_SERVER" "${C2[@]}" </dev/null >"$LOGS/bk-server.log" 2>&1 &
TIME_PID=$!
for _ in $(seq 50); do
    DAEMON_PID=$(pgrep -P "$TIME_PID" || true)
    [[ -z $DAEMON_PID ]] || break
    sleep 0.1
done
[[ -n $DAEMON_PID ]] || die "bk-server did not start (see $LOGS/bk-server.log)"
done_jobs=0
while :; do
    kill -0 "$DAEMON_PID" 2>/dev/null \
        || die "bk-server exited before every job had run ($done_jobs of $JOBS done): $(tail -n 5 "$LOGS/bk-server.log")"
    done_jobs=$(status_done) || die "bk status --json failed while polling (see $LOGS/poll.err)"
    ((done_jobs < JOBS)) || break
    elapsed=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%d", b - a}')
    ((elapsed < TIMEOUT)) || die "after ${TIMEOUT}s only $done_jobs of $JOBS jobs had finished a run (daemon log: $LOGS/bk-server.log)"
    sleep 1
done
t1=$(date +%s.%N)
b1=$(busy)
say "part 2: every job has run; stopping bk-server (SIGTERM)"
kill -TERM "$DAEMON_PID"
daemon_rc=0
wait "$TIME_PID" || daemon_rc=$?
TIME_PID=
DAEMON_PID=
# GNU time writes "Command exited with non-zero status N" first when it did.
read -r d_wall d_user d_sys d_rss < <(tail -n 1 "$DAEMON_TIMEF")
((daemon_rc == 0)) || say "bk-server exited with status $daemon_rc after SIGTERM (log: $LOGS/bk-server.log)"
kill -TERM "$SSHD_PID" 2>/dev/null || true
wait "$SSHD_PID" 2>/dev/null || true
SSHD_PID=
other2=$(awk -v b="$((b1 - b0))" -v hz="$HZ" -v u="$d_user" -v s="$d_sys" \
    'BEGIN {o = b / hz - u - s; printf "%.1f", (o < 0 ? 0 : o)}')

# ============================================================================== report
export S_BACKUPS=$BACKUPS S_JOBS=$JOBS S_HOSTS=$HOSTS S_RUNS=$RUNS S_DUMP_MB=$DUMP_MB
export S_MAX_CONCURRENT=$MAX_CONCURRENT S_HOST_MAX_JOBS=$HOST_MAX_JOBS S_TARGET=$TARGET_S
export S_QUIET_WAIT=$QUIET_WAIT S_RUN_BUDGET=$RUN_BUDGET S_REPO_FILES=$REPO_FILES S_REPO_FS=$REPO_FS
export S_GEN_S=$GEN_S S_REPO_MB=$REPO_MB S_JOB1=$JOB1 S_JOB1_COUNT=$JOB1_COUNT
export S_D_WALL=$d_wall S_D_CPU=$(awk -v u="$d_user" -v s="$d_sys" 'BEGIN {print u + s}')
export S_D_RSS=$d_rss S_D_RC=$daemon_rc S_OTHER2=$other2
export S_POLL=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
export S_VERSION="$("$BK" --version 2>/dev/null | head -n1 || echo 'bk ?')"
export S_REV="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
export S_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
export S_WHEN="$(date -u '+%Y-%m-%d %H:%M UTC')"
python3 - "$ROWS" "$P2/catalog.db" "$P2/job-hosts.tsv" "$MD" <<'EOF' || die "writing the report failed (see the Python error above)"
import os, re, sqlite3, statistics, sys
from datetime import datetime

rows_path, catalog, job_hosts, md_path = sys.argv[1:]
E = os.environ
BACKUPS, JOBS, HOSTS, RUNS = (int(E[k]) for k in ("S_BACKUPS", "S_JOBS", "S_HOSTS", "S_RUNS"))
MAX_CONCURRENT, HOST_MAX_JOBS = int(E["S_MAX_CONCURRENT"]), int(E["S_HOST_MAX_JOBS"])
DUMP_MB, TARGET = int(E["S_DUMP_MB"]), float(E["S_TARGET"])
JOB1, JOB1_COUNT = E["S_JOB1"], int(E["S_JOB1_COUNT"])
n = lambda x: format(x, ",")

out = [
    "## Scale",
    "",
    "%s; %s (%s); %s." % (E["S_WHEN"], E["S_VERSION"], E["S_REV"], E["S_CPU"]),
    "",
]

# ------------------------------------------------------------------ part 1
steps = {}
for line in open(rows_path):
    name, cat, run, wall, cpu, rss, other = line.rstrip("\n").split("\t")
    steps.setdefault((name, cat), []).append((float(wall), int(rss) / 1024, float(other)))
out += [
    "### Listing %s backups of %d jobs" % (n(BACKUPS), JOBS),
    "",
    "A local (`file://`) repository of %s committed backups (about %s per job), generated "
    "by `bench/scale_repo.py` in %s s from the commit record of one real `bk run` (%s MiB "
    "on %s; payload and manifest objects are hard links to one copy of the real ones). "
    "The catalog is on disk. Each command "
    "ran up to %d times under GNU time (no further run once its runs took %s s together): "
    "median wall time, range, highest peak RSS. The repository is in memory (%s)."
    % (n(BACKUPS), n(BACKUPS // JOBS), E["S_GEN_S"], E["S_REPO_MB"], E["S_REPO_FS"], RUNS,
       E["S_RUN_BUDGET"], "tmpfs" if E["S_REPO_FS"] == "tmpfs" else "page cache, just written"),
    "",
    "| command | catalog | runs | wall s (median) | wall range s | peak RSS MiB | under %g s | other CPU s |" % TARGET,
    "|---|---|---|---|---|---|---|---|",
]
warm_slow, cold_slow = [], []
for (name, cat), runs in steps.items():
    walls = sorted(r[0] for r in runs)
    med = statistics.median_low(walls)
    other = next(r[2] for r in runs if r[0] == med)
    ok = med < TARGET
    if not ok and cat != "-":
        (warm_slow if cat == "warm" else cold_slow).append("`%s` (%.2f s)" % (name, med))
    label = "`%s`" % name + (" (%s backups)" % n(JOB1_COUNT) if name == "bk list " + JOB1 else "")
    if cat == "-":
        label += " (baseline)"
    out.append("| %s | %s | %d | %.2f | %s | %.0f | %s | %.1f |" % (
        label, cat, len(runs), med,
        "%.2f–%.2f" % (walls[0], walls[-1]) if len(walls) > 1 else "-",
        max(r[1] for r in runs), "-" if cat == "-" else "yes" if ok else "**no**", other))
out.append("")
target = "**Target: answers in under %g s with 100,000 backups.**" % TARGET
if BACKUPS != 100000:
    target += " (This run had %s backups, so the verdict is not the one for 100,000.)" % n(BACKUPS)
out.append(target + " With the catalog warm: " + (
    "**not met** by " + ", ".join(warm_slow) + "." if warm_slow else "**met** by every command."))
out.append("Without a catalog, and `bk catalog rebuild`: " + (
    "over %g s: " % TARGET + ", ".join(cold_slow) + "." if cold_slow else "also under %g s." % TARGET))
out += [
    "",
    "- *none*: no catalog file, so `bk list` reads every commit record from the repository "
    "(it never creates a catalog). *warm*: after `bk catalog rebuild`; `bk list` still "
    "lists the repository's keys but takes the commit records it already holds from the "
    "catalog. `bk status` reads only the catalog, so it is measured warm only.",
    "- `bk list` and `bk list JOB` without a catalog write to /dev/null, the others to "
    "files; the counts listed were checked against the generated repository.",
    "- Baseline: `find` walking the repository and reading every file's size and time "
    "(%s files), which is what listing the store costs before bk reads any record."
    % n(int(E["S_REPO_FILES"])),
    "- other CPU s: CPU time the rest of the machine used during that run (above ~1 s the "
    "command competed for the cores and its time is pessimistic). Before each run the "
    "script waited up to %s s for an idle second." % E["S_QUIET_WAIT"],
    "",
]

# ------------------------------------------------------------------ part 2
def ts(s):
    # RFC 3339 with up to nanoseconds (Python 3.11 parses at most microseconds).
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        raise ValueError("unparseable time in the catalog: %r" % s)
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + (float("0." + m.group(2)) if m.group(2) else 0.0)

host_of = dict(line.rstrip("\n").split("\t") for line in open(job_hosts) if line.strip())
db = sqlite3.connect("file:%s?mode=ro" % catalog, uri=True)
runs = db.execute(
    "SELECT job, started, finished, status, bytes_in, error FROM runs "
    "WHERE trigger != 'bench-seed' ORDER BY id").fetchall()
by_status = {}
per_job = {}
for r in runs:
    by_status[r[3]] = by_status.get(r[3], 0) + 1
    per_job[r[0]] = per_job.get(r[0], 0) + 1
succeeded = by_status.get("success", 0)
failed = len(runs) - succeeded
not_run = sorted(set(host_of) - set(per_job))
extra = sorted(j for j, k in per_job.items() if k > 1)
spans = [(r[0], ts(r[1]), ts(r[2])) for r in runs if r[2]]

def max_overlap(intervals):
    # Ends sort before starts at the same instant: back-to-back runs do not overlap.
    events = sorted([(s, 1) for s, e in intervals] + [(e, -1) for s, e in intervals])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best

glob = max_overlap([(s, e) for _, s, e in spans])
per_host = {}
for job, s, e in spans:
    per_host.setdefault(host_of.get(job, "?"), []).append((s, e))
host_max = {h: max_overlap(v) for h, v in per_host.items()}
worst_host = max(sorted(host_max), key=lambda h: host_max[h]) if host_max else "-"
worst = host_max.get(worst_host, 0)
first = min((s for _, s, _ in spans), default=0.0)
last = max((e for _, _, e in spans), default=0.0)
makespan = last - first
durations = sorted(e - s for _, s, e in spans)
bytes_in = sum(r[4] or 0 for r in runs)
verdict = lambda ok: "yes" if ok else "**NO: exceeded**"
meets = lambda ok: "yes" if ok else "**no**"

out += [
    "### %d jobs on %d hosts through the daemon" % (JOBS, HOSTS),
    "",
    "One `bk-server` with `max_concurrent_jobs = %d`; %d `[hosts]` entries, all one local "
    "sshd (root, ed25519 key), `max_jobs = %d` each; %d `command` jobs round-robin over "
    "them and named after their host (`h1-job001`, `h1-job011`, …: the daemon starts due "
    "jobs in name order, so runs ask for slots several per host and `max_jobs` is put to "
    "work), each streaming %d MiB of log-like text over SSH (about half numbered lines from "
    "`seq`, half one repeated line). Every job was due at start-up: the new catalog was "
    "seeded with one past run per job, so each caught up a missed nightly run at once "
    "(a job that never ran is not caught up, docs/schedules.md); seed rows are left out of "
    "every figure. The script waited for `bk status --json` to show a finished run of "
    "every job, then sent SIGTERM. Run figures come from the catalog's `runs` table."
    % (MAX_CONCURRENT, HOSTS, HOST_MAX_JOBS, JOBS, DUMP_MB),
    "",
    "| figure | measured | limit | within limit |",
    "|---|---|---|---|",
    "| runs succeeded | %d of %d jobs | %d | %s |" % (succeeded, JOBS, JOBS, meets(succeeded == JOBS and not extra)),
    "| runs failed or interrupted | %d | 0 | %s |" % (failed, meets(failed == 0)),
    "| most runs at once, all hosts | %d | %d (`max_concurrent_jobs`) | %s |" % (
        glob, MAX_CONCURRENT, verdict(glob <= MAX_CONCURRENT)),
    "| most runs at once on one host | %d (%s) | %d (`max_jobs`) | %s |" % (
        worst, worst_host, HOST_MAX_JOBS, verdict(worst <= HOST_MAX_JOBS)),
    "| wall time, first run start to last run end | %.1f s | - | - |" % makespan,
    "| wall time, daemon start to every run seen finished (1 s polling) | %.1f s | - | - |" % float(E["S_POLL"]),
    "| time per run: median (min–max) | %.1f s (%.1f–%.1f) | - | - |" % (
        statistics.median(durations) if durations else 0, durations[0] if durations else 0,
        durations[-1] if durations else 0),
    "| source data pulled | %s MiB, %.0f MiB/s over the wall time | - | - |" % (
        n(round(bytes_in / 2**20)), bytes_in / 2**20 / makespan if makespan > 0 else 0),
    "| daemon peak RSS | %.0f MiB | - | - |" % (int(E["S_D_RSS"]) / 1024),
    "| daemon CPU, user + system (children included) | %.1f s | - | - |" % float(E["S_D_CPU"]),
    "",
]
exceeded = []
if glob > MAX_CONCURRENT:
    exceeded.append("%d runs overlapped across hosts, above max_concurrent_jobs = %d" % (glob, MAX_CONCURRENT))
over = {h: k for h, k in host_max.items() if k > HOST_MAX_JOBS}
if over:
    exceeded.append("more than max_jobs = %d runs overlapped on %s" % (
        HOST_MAX_JOBS, ", ".join("%s (%d)" % kv for kv in sorted(over.items()))))
if exceeded:
    out.append("**A concurrency limit was exceeded:** " + "; ".join(exceeded) + ".")
else:
    out.append("Both concurrency limits held: at most %d runs at once overall and at most %d on one host."
               % (glob, worst))
problems = []
if failed:
    problems.append("%d run(s) did not succeed (%s); first error: %s" % (
        failed, ", ".join("%s: %d" % kv for kv in sorted(by_status.items()) if kv[0] != "success"),
        " ".join(next((r[5] for r in runs if r[3] != "success" and r[5]), "none recorded").split())))
if not_run:
    problems.append("never ran: " + ", ".join(not_run))
if extra:
    problems.append("ran more than once: " + ", ".join(extra))
if int(E["S_D_RC"]):
    problems.append("bk-server exited with status %s after SIGTERM" % E["S_D_RC"])
if problems:
    out += ["", "**Problems:** " + "; ".join(problems) + "."]
hkey = lambda h: (len(h), h)
out += [
    "",
    "- Most runs at once, per host: " + ", ".join("%s %d" % (h, host_max[h]) for h in sorted(host_max, key=hkey)) + ".",
    "- A run's catalog interval begins after it took its slots and ends before it returns "
    "them, so the overlaps above are never higher than the slots actually held at once.",
    "- Daemon peak RSS and CPU are GNU time's for bk-server and the children it waited "
    "for; ssh's control-master processes detach, so they count as *other*. Everything runs "
    "on the same cores: CPU used by everything but bk-server (sshd and the source commands, "
    "ssh, polling, anything else on the machine) during Part 2: %.1f s." % float(E["S_OTHER2"]),
    "",
]
md = "\n".join(out)
open(md_path, "w").write(md)
print(md)
EOF
say "written to $MD (scratch in $W)"
