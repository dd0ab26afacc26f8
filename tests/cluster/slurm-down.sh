#!/usr/bin/env bash
# Stop the test cluster started by slurm-up.sh: cancel its jobs, stop every daemon by the PID in
# its pid file (never by name), restore /etc/hosts and /etc/slurm/slurm.conf. Logs stay in the
# state folder. Safe to run when nothing is up.
set -uo pipefail

STATE="${SSL_BF_SLURM_STATE:-/tmp/ssl-bf-slurm}"
HOSTS_MARK="# ssl-bf-slurm test cluster"
QUIET=0
[ "${1:-}" = "--quiet" ] && QUIET=1
T0=$(date +%s%N)
say() {
    [ $QUIET = 1 ] && return
    local ms=$(( ($(date +%s%N) - T0) / 1000000 ))
    printf '[slurm-down %3d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"
}

if [ ! -d "$STATE" ]; then
    say "no state folder $STATE: nothing to stop"
    exit 0
fi
rm -f "$STATE/ready"
export SLURM_CONF="$STATE/slurm.conf"

# Stop the processes in the given pid files together: TERM, then KILL after $GRACE_S seconds.
GRACE_S=15
stop_pidfiles() {
    local file pid pids=()
    for file in "$@"; do
        [ -s "$file" ] || continue
        pid="$(tr -dc '0-9' <"$file")"
        rm -f "$file"
        [ -n "$pid" ] && [ -d "/proc/$pid" ] || continue
        say "stopping $(basename "$file" .pid) (pid $pid)"
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    done
    for _ in $(seq $(( GRACE_S * 10 ))); do
        local alive=()
        for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive+=("$pid"); done
        pids=("${alive[@]}")
        [ ${#pids[@]} -eq 0 ] && return 0
        sleep 0.1
    done
    say "still alive after ${GRACE_S} s, sending KILL: ${pids[*]}"
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

# 1. Cancel the jobs, so no job step outlives the daemons (bounded wait).
ctld_pid="$(cat "$STATE/pids/slurmctld.pid" 2>/dev/null || true)"
if [ -n "$ctld_pid" ] && [ -d "/proc/$ctld_pid" ] && [ -f "$SLURM_CONF" ]; then
    jobs="$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 75); do
            [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

# 2. Daemons in three waves: SLURM itself, then accounting, then the services it used.
#    Node pid files are node-<name>.pid (a glob slurmd*.pid would also match slurmdbd.pid).
shopt -s nullglob
stop_pidfiles "$STATE"/pids/node-*.pid "$STATE/pids/slurmctld.pid"
stop_pidfiles "$STATE/pids/slurmdbd.pid"
# mariadb/munged pid files exist only when slurm-up.sh started them (not a machine's own).
stop_pidfiles "$STATE/pids/mariadb.pid" "$STATE/pids/munged.pid"

# 3. Undo the machine-wide edits.
if [ -f "$STATE/hosts-added" ] && grep -qF "$HOSTS_MARK" /etc/hosts; then
    # Rewrite in place (no rename): /etc/hosts may be a bind mount.
    kept="$(grep -vF "$HOSTS_MARK" /etc/hosts)"
    printf '%s\n' "$kept" >/etc/hosts
    rm -f "$STATE/hosts-added"
    say "restored /etc/hosts"
fi
if [ -f "$STATE/etc-link" ] && [ -L /etc/slurm/slurm.conf ] \
        && [ "$(readlink /etc/slurm/slurm.conf)" = "$STATE/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf "$STATE/etc-link"
fi
say "SLURM test cluster stopped (logs kept in $STATE/log)"
