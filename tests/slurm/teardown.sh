#!/usr/bin/env bash
# Stops the test cluster that tests/slurm/setup.sh STATE_DIR started:
#
#   tests/slurm/teardown.sh STATE_DIR
#
# 1. cancels every job still in the cluster (scancel through its own slurm.conf) and waits for them to go,
#    so that no slurmstepd or job process outlives slurmd;
# 2. stops the daemons listed in STATE_DIR/pids, in reverse start order: SIGTERM, wait up to 20 s, SIGKILL.
#    A PID is signalled only if that process still carries this cluster's marker (SLURM_TEST_STATE=STATE_DIR
#    in its environment, or STATE_DIR on its command line), so a reused PID is never touched;
# 3. kills what is left of this cluster's job steps (normally none after step 1): the slurmstepd processes
#    holding a unix socket under STATE_DIR/spool, and the processes below them.
# Nothing else is signalled. Safe to run twice, or on a STATE_DIR where nothing runs.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 STATE_DIR" >&2
    exit 2
fi
[ -d "$1" ] || exit 0
STATE="$(cd "$1" && pwd)"
PIDS="$STATE/pids"
[ -s "$PIDS" ] || exit 0
export PATH="$PATH:/usr/sbin:/sbin"

ours() {  # ours PID: alive (not a zombie) and started by setup.sh for this STATE_DIR
    local pid="$1" st
    st="$(cut -d ')' -f2 "/proc/$pid/stat" 2>/dev/null | awk '{print $1}')" || return 1
    [ -n "$st" ] && [ "$st" != Z ] || return 1
    { tr '\0' '\n' < "/proc/$pid/environ"; } 2>/dev/null | grep -qxF "SLURM_TEST_STATE=$STATE" && return 0
    { tr '\0' '\n' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "$STATE/" && return 0
    return 1
}
pid_of() { awk -v n="$1" '$2 == n {print $1}' "$PIDS" | tail -n 1; }

# 1. no job left behind
ctld="$(pid_of slurmctld)"
if [ -n "$ctld" ] && ours "$ctld" && [ -f "$STATE/slurm.conf" ]; then
    export SLURM_CONF="$STATE/slurm.conf"
    if [ -n "$(timeout 10 squeue -h -o %i 2>/dev/null)" ]; then
        timeout 10 scancel --partition=debug >/dev/null 2>&1 || true
        end=$(( $(date +%s) + 20 ))
        while [ -n "$(timeout 10 squeue -h -t all -o '%i %T' 2>/dev/null | grep -vE ' (COMPLETED|CANCELLED|FAILED|TIMEOUT|NODE_FAIL|PREEMPTED|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)$')" ] \
              && [ "$(date +%s)" -lt "$end" ]; do
            sleep 0.2
        done
    fi
fi

# 2. the daemons, last started first
mapfile -t lines < <(tac "$PIDS")
for line in "${lines[@]}"; do
    read -r pid name <<<"$line"
    [ -n "${pid:-}" ] || continue
    ours "$pid" || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 200); do
        ours "$pid" || break
        sleep 0.1
    done
    if ours "$pid"; then
        echo "slurm teardown: $name (pid $pid) ignored SIGTERM for 20 s: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
done

# 3. stray job steps of this cluster (normally none: step 1 ended them; left when slurmctld had died):
#    the slurmstepd processes holding a unix socket under STATE_DIR/spool, and the processes below them
inodes="$(awk -v d="$STATE/spool/" 'index($NF, d) == 1 {print $7}' /proc/net/unix 2>/dev/null | sort -u)"
if [ -n "$inodes" ]; then
    strays=()
    for dir in /proc/[0-9]*; do
        [ "$(cat "$dir/comm" 2>/dev/null)" = slurmstepd ] || continue
        for fd in "$dir"/fd/*; do
            link="$(readlink "$fd" 2>/dev/null)" || continue
            case "$link" in socket:\[*\]) ;; *) continue ;; esac
            inode="${link#socket:[}"; inode="${inode%]}"
            if grep -qxF "$inode" <<<"$inodes"; then strays+=("${dir#/proc/}"); break; fi
        done
    done
    if [ ${#strays[@]} -gt 0 ]; then
        # the stray steps and every process below them (the job's processes)
        declare -A keep=()
        for p in "${strays[@]}"; do keep[$p]=1; done
        changed=1
        while [ $changed = 1 ]; do
            changed=0
            for stat in /proc/[0-9]*/stat; do
                read -r -a f < <(cut -d ')' -f2 "$stat" 2>/dev/null) || continue
                p="${stat#/proc/}"; p="${p%/stat}"
                if [ -z "${keep[$p]:-}" ] && [ -n "${f[1]:-}" ] && [ -n "${keep[${f[1]}]:-}" ]; then
                    keep[$p]=1; changed=1
                fi
            done
        done
        tree=("${!keep[@]}")
        echo "slurm teardown: killing leftover job steps and their processes: ${tree[*]}" >&2
        kill -KILL "${tree[@]}" 2>/dev/null
    fi
fi

: > "$PIDS"
exit 0
