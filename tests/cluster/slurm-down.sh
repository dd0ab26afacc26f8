#!/usr/bin/env bash
# Stop the test cluster started by slurm-up.sh: cancel its jobs, stop every daemon by the PID in
# its pid file (never by name), restore /etc/hosts and /etc/slurm/slurm.conf. Logs stay in the
# state folder. Safe to run when nothing is up.
set -uo pipefail

STATE="${SSL_BF_SLURM_STATE:-/tmp/ssl-bf-slurm}"
HOSTS_MARK="# ssl-bf-slurm test cluster"
QUIET=0
[ "${1:-}" = "--quiet" ] && QUIET=1
say() { [ $QUIET = 1 ] || echo "[slurm-down] $*"; }

if [ ! -d "$STATE" ]; then
    say "no state folder $STATE: nothing to stop"
    exit 0
fi
rm -f "$STATE/ready"
export SLURM_CONF="$STATE/slurm.conf"

# Stop the process in pid file $1 (TERM, then KILL after $2 s).
stop_pidfile() {
    local file=$1 grace=${2:-15} pid
    [ -s "$file" ] || return 0
    pid="$(tr -dc '0-9' <"$file")"
    rm -f "$file"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
    say "stopping $(basename "$file" .pid) (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq $(( grace * 5 ))); do
        [ -d "/proc/$pid" ] || return 0
        sleep 0.2
    done
    say "pid $pid still alive after ${grace} s: KILL"
    kill -KILL "$pid" 2>/dev/null || true
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

# 2. Daemons, nodes first. Node pid files are node-<name>.pid (a glob slurmd*.pid would also
#    match slurmdbd.pid).
for f in "$STATE"/pids/node-*.pid; do
    [ -e "$f" ] && stop_pidfile "$f"
done
stop_pidfile "$STATE/pids/slurmctld.pid"
stop_pidfile "$STATE/pids/slurmdbd.pid"
stop_pidfile "$STATE/pids/mariadb.pid" 30   # only present when slurm-up.sh started MariaDB
stop_pidfile "$STATE/pids/munged.pid"       # likewise for munged

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
