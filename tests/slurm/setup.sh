#!/usr/bin/env bash
# A real single-node Slurm cluster on localhost, for the end-to-end tests of the Slurm backend.
#
#   tests/slurm/setup.sh STATE_DIR      (as root, on Linux; Debian/Ubuntu for the package install)
#
# Run by .ci/run (as root, before the tests) or by hand, never by the tests: they only use the cluster
# (tests/slurm/cluster.py finds it through SLURM_TEST_STATE=STATE_DIR, and skips where there is none).
# Installs what is missing (slurmctld slurmd slurm-client slurmdbd munge mariadb-server, with apt-get, only
# when a binary is missing; .ci/run installs them beforehand with its other packages, in one apt-get run),
# writes every config under STATE_DIR, and starts, each with its pid and log file under STATE_DIR, in this
# order: mariadbd (slurmdbd's database), munged, slurmdbd, slurmctld, slurmd.
# Waits (bounded) until the node is idle and sacct answers, then prints on stdout the variables a client
# needs, one KEY=VALUE a line (SLURM_CONF=STATE_DIR/slurm.conf ...), also kept in STATE_DIR/cluster.env;
# everything else goes to stderr.
# The PIDs it started are in STATE_DIR/pids ("PID NAME" a line, in start order); teardown.sh stops them.
#
# Idempotent: it first stops the daemons recorded in STATE_DIR/pids (if any), then rewrites the configs and
# starts them again; the database, the controller's state (job ids go on) and the ports are kept.
#
# The cluster: one node named after `hostname -s` (NodeAddr=127.0.0.1) that advertises 8 CPUs and 4 GPUs
# (fake: character devices equal to /dev/null under STATE_DIR/dev, so Slurm sets CUDA_VISIBLE_DEVICES per
# job), one partition `debug` (default, no time limit), all daemons as root, ports picked free on first run.
#
# Outside STATE_DIR it touches only:
#   - the packages (apt-get install), and during the install /usr/sbin/policy-rc.d when absent (created and
#     removed again, so that the packages' scripts start no service);
#   - nothing else: munged gets its key, seed, socket, pid and log under STATE_DIR (no /etc/munge/munge.key,
#     no /run/munge), MariaDB its data dir, socket and port, the Slurm daemons their state and spool dirs.
#     The clients find the config through SLURM_CONF (no /etc/slurm/slurm.conf is written).
#
#   tests/slurm/setup.sh --missing-packages   prints the Debian packages it would install (one a line, none
#                                             when all are there) and exits: .ci/run installs them
set -euo pipefail

missing_packages() {  # the packages of the programs not installed, one a line, sorted
    local pair bin pkg
    for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client sacct:slurm-client slurmdbd:slurmdbd \
                munged:munge mariadbd:mariadb-server mariadb-install-db:mariadb-server mariadb:mariadb-client; do
        bin="${pair%%:*}" pkg="${pair#*:}"
        if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null 2>&1; then
            echo "$pkg"
        fi
    done | sort -u
}
if [ "${1:-}" = --missing-packages ] && [ $# -eq 1 ]; then
    missing_packages
    exit 0
fi
if [ $# -ne 1 ]; then
    echo "usage: $0 STATE_DIR   (or: $0 --missing-packages)" >&2
    exit 2
fi
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$1"
STATE="$(cd "$1" && pwd)"
T0=$(date +%s%N)

say() { local ds=$(( ($(date +%s%N) - T0) / 100000000 )); echo "slurm setup [$((ds / 10)).$((ds % 10))s]: $*" >&2; }
die() { echo "slurm setup: ERROR: $*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || die "needs Linux"
[ "$(id -u)" = 0 ] || die "needs root (the daemons run as root; munge and mknod need it)"

# ---------------------------------------------------------------------------------------------- packages
mapfile -t need_install < <(missing_packages)
export PATH="$PATH:/usr/sbin:/sbin"
if [ ${#need_install[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${need_install[*]} and no apt-get to install them"
    say "installing ${need_install[*]} with apt-get"
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # keep the packages' maintainer scripts from starting services
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    rc=0
    { apt-get install -y -qq --no-install-recommends "${need_install[@]}" >"$STATE/apt.log" 2>&1 \
      || { apt-get update -qq >>"$STATE/apt.log" 2>&1 \
           && apt-get install -y -qq --no-install-recommends "${need_install[@]}" >>"$STATE/apt.log" 2>&1; }; } \
      || rc=$?
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    if [ $rc -ne 0 ]; then
        tail -n 30 "$STATE/apt.log" >&2
        die "apt-get install ${need_install[*]} failed (log: $STATE/apt.log)"
    fi
    say "installed"
fi

# ------------------------------------------------------------------------ stop what a previous run left
if [ -s "$STATE/pids" ]; then
    say "stopping the daemons of a previous run"
    "$HERE/teardown.sh" "$STATE" >&2
fi

# ----------------------------------------------------------------------------------------- layout, ports
mkdir -p "$STATE"/{log,run,ctld,spool,dev,munge,mysql,tmp}
chmod 755 "$STATE"
: > "$STATE/pids"
NODE="$(hostname -s)"
CLUSTER=sweeptest
MUNGE_SOCKET="$STATE/munge/munge.socket.2"
MYSQL_SOCKET="$STATE/run/mysqld.sock"
for sock in "$MUNGE_SOCKET" "$MYSQL_SOCKET" "$STATE/spool/${NODE}_4294967295.4294967295"; do
    [ ${#sock} -lt 100 ] || die "STATE_DIR is too long for a unix socket path: $sock"
done

if [ ! -s "$STATE/ports.env" ]; then  # four free TCP ports, kept for the next runs on this STATE_DIR
    python3 - > "$STATE/ports.env" <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
names = ["MYSQL_PORT", "DBD_PORT", "CTLD_PORT", "SLURMD_PORT"]
for name, s in zip(names, socks):
    print(f"{name}={s.getsockname()[1]}")
EOF
fi
# shellcheck disable=SC1091
. "$STATE/ports.env"

# ------------------------------------------------------------------------------------------ fake GPUs
for i in 0 1 2 3; do
    dev="$STATE/dev/nvidia$i"
    if [ ! -c "$dev" ]; then
        rm -f "$dev"
        mknod "$dev" c 1 3 || die "mknod $dev failed (GRES needs character devices)"
    fi
done

# ------------------------------------------------------------------------------------------- configs
SLURM_CONF_FILE="$STATE/slurm.conf"
cat > "$SLURM_CONF_FILE" <<EOF
# Written by tests/slurm/setup.sh: a one-node test cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
TmpFS=$STATE/tmp
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
# the node advertises what its config says (8 CPUs, 4 GPUs), not what the machine has
SlurmdParameters=config_overrides
ReturnToService=2
# scheduling at once: no batch delay (a job starts ~0.2-0.7 s after sbatch), and the periodic passes
# every 1-2 s instead of 30-60 s, which start a job whose begin time passed (a requeued one: 10 s after
# scontrol requeue instead of 26 s)
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
# requeue works (scontrol requeue), cancels end fast (KillWait after SIGTERM), finished jobs stay in
# squeue -t all (not in plain squeue) for 30 s
JobRequeue=1
KillWait=5
MinJobAge=30
InactiveLimit=0
SlurmdTimeout=30
SlurmctldTimeout=30
MessageTimeout=10
# accounting (sacct) through slurmdbd
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# for slurmdbd connections the munge socket is given here, not by AuthInfo
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=8 RealMemory=64000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

cat > "$STATE/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=$STATE/dev/nvidia[0-3]
EOF

DB_PASS="slurm-test-$(basename "$STATE")"
cat > "$STATE/slurmdbd.conf" <<EOF
# Written by tests/slurm/setup.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chown root:root "$STATE/slurmdbd.conf"
chmod 600 "$STATE/slurmdbd.conf"

# ------------------------------------------------------------------------------------- start helpers
# Each daemon runs in the foreground in its own session (setsid: no SIGINT from the caller's terminal),
# stdin from /dev/null and stdout/stderr to STATE/log/NAME.out (never the caller's pipes); a marker in its
# environment (SLURM_TEST_STATE) lets teardown.sh recognise what this cluster started.
export SLURM_TEST_STATE="$STATE"
start() {  # start NAME COMMAND...
    local name="$1"; shift
    setsid "$@" </dev/null >"$STATE/log/$name.out" 2>&1 &
    local pid=$!
    echo "$pid $name" >> "$STATE/pids"
    say "started $name (pid $pid)"
}
alive() { kill -0 "$(awk -v n="$1" '$2 == n {print $1}' "$STATE/pids")" 2>/dev/null; }
fail() {  # fail NAME MESSAGE
    local name="$1"; shift
    {
        echo "slurm setup: ERROR: $*"
        for f in "$STATE/log/$name.out" "$STATE/log/$name.log"; do
            [ -s "$f" ] && { echo "--- tail of $f"; tail -n 25 "$f"; }
        done
    } >&2
    "$HERE/teardown.sh" "$STATE" >&2 || true
    exit 1
}
wait_for() {  # wait_for NAME SECONDS WHAT COMMAND...: until COMMAND succeeds; fails early if NAME died
    local name="$1" secs="$2" what="$3"; shift 3
    local end=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        alive "$name" || fail "$name" "$name exited before $what"
        [ "$(date +%s)" -lt "$end" ] || fail "$name" "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
    say "$what"
}
export SLURM_CONF="$SLURM_CONF_FILE"

# ------------------------------------------------------------------------------------------- mariadb
if [ ! -d "$STATE/mysql/mysql" ]; then
    say "initialising the database"
    mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=root --auth-root-authentication-method=socket \
        --skip-test-db >"$STATE/log/mariadb-install.out" 2>&1 \
        || { tail -n 25 "$STATE/log/mariadb-install.out" >&2; die "mariadb-install-db failed"; }
fi
start mariadb mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --socket="$MYSQL_SOCKET" \
    --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$STATE/run/mariadb.pid" \
    --log-error="$STATE/log/mariadb.log" --tmpdir="$STATE/tmp" --skip-log-bin \
    --innodb-buffer-pool-size=128M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
    --innodb-flush-log-at-trx-commit=2
mysql_root() { mariadb --no-defaults --socket="$MYSQL_SOCKET" -u root "$@"; }
wait_for mariadb 60 "mariadb accepts connections" mysql_root -e "SELECT 1"
mysql_root -e "CREATE USER IF NOT EXISTS 'slurm'@'%' IDENTIFIED BY '$DB_PASS';
               ALTER USER 'slurm'@'%' IDENTIFIED BY '$DB_PASS';
               GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%'; FLUSH PRIVILEGES;" \
    || fail mariadb "could not create the slurm database user"

# --------------------------------------------------------------------------------------------- munge
# munged's files all live in STATE/munge (root, 755; the key 400): the key, the seed, the socket, the pid.
# It runs as root (slurm's daemons do too), so STATE_DIR may be in a folder only root can enter; --force
# lets it accept a STATE_DIR under a world-writable sticky folder such as /tmp.
chmod 755 "$STATE/munge"
if [ ! -s "$STATE/munge/munge.key" ]; then
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$STATE/munge/munge.key" --force >/dev/null 2>&1 \
            || dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    else
        dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    fi
fi
chmod 400 "$STATE/munge/munge.key"
rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
start munged munged --foreground --force --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --seed-file="$STATE/munge/munged.seed" --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log"
munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
wait_for munged 20 "munged answers" munge_ok

# ------------------------------------------------------------------------------------------ slurmdbd
start slurmdbd slurmdbd -D -s  # finds slurmdbd.conf next to $SLURM_CONF
wait_for slurmdbd 60 "slurmdbd answers" timeout 10 sacctmgr -n list cluster format=cluster
if [ -z "$(timeout 10 sacctmgr -n -P list cluster "$CLUSTER" format=cluster 2>/dev/null)" ]; then
    timeout 20 sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail slurmdbd "sacctmgr add cluster $CLUSTER failed"
    say "cluster $CLUSTER registered"
fi

# ----------------------------------------------------------------------------------- slurmctld, slurmd
start slurmctld slurmctld -D -s -i -f "$SLURM_CONF_FILE"
wait_for slurmctld 60 "slurmctld answers" timeout 10 scontrol ping
start slurmd slurmd -D -s -f "$SLURM_CONF_FILE"
node_idle() { [ "$(timeout 10 sinfo -h -n "$NODE" -o %T)" = idle ]; }
wait_for slurmd 60 "node $NODE is idle" node_idle
wait_for slurmdbd 60 "sacct answers" timeout 10 sacct -n -X -S now

say "ready"
# on stdout, and in STATE/cluster.env, where tests/slurm/cluster.py reads them (given SLURM_TEST_STATE=STATE)
{
    echo "SLURM_CONF=$SLURM_CONF_FILE"
    echo "SLURM_TEST_STATE=$STATE"
    echo "SLURM_TEST_NODE=$NODE"
    echo "SLURM_TEST_PARTITION=debug"
    echo "SLURM_TEST_CLUSTER=$CLUSTER"
    echo "SLURM_TEST_GPUS=4"
    echo "SLURM_TEST_CPUS=8"
} > "$STATE/cluster.env"
cat "$STATE/cluster.env"
