#!/usr/bin/env bash
# Start a real two-node SLURM cluster (with accounting) on this one machine, for the cluster tests.
#
#   tests/cluster/slurm-up.sh          # install if needed, write configs, start, wait until ready
#   tests/cluster/slurm-down.sh        # stop everything by PID, restore /etc/hosts
#
# Daemons: munged, mariadbd, slurmdbd, slurmctld and two slurmd "nodes" (n1, n2), all run as root
# without systemd. Configs, pid files, logs and SLURM state live under $SSL_BF_SLURM_STATE
# (default /tmp/ssl-bf-slurm); `$SSL_BF_SLURM_STATE/env` exports SLURM_CONF for clients.
# Facts this relies on: docs/slurm-test-cluster.md (cred_expire=10, %n paths, config_overrides).
# Re-runnable: a previous cluster started from the same state folder is stopped first.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${SSL_BF_SLURM_STATE:-/tmp/ssl-bf-slurm}"
CLUSTER="${SSL_BF_SLURM_CLUSTER:-sslbf}"
PORT_BASE="${SSL_BF_SLURM_PORT_BASE:-6817}"   # ctld, dbd, n1, n2 = base, base+2, base+4, base+5
READY_TIMEOUT_S="${SSL_BF_SLURM_READY_TIMEOUT_S:-60}"
NODES=(n1 n2)
HOSTS_MARK="# ssl-bf-slurm test cluster"
T0=$(date +%s%N)

log() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[slurm-up %3d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (daemons run as root, /etc/hosts is edited)"

# Wait (bounded) until "$@" succeeds; $1 is the limit in seconds, $2 a description.
wait_for() {
    local limit=$1 what=$2; shift 2
    local end=$(( $(date +%s) + limit ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.2
    done
    log "$what ready"
}

# --- 1. packages --------------------------------------------------------------------------------
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "[slurm-up] installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have empty package lists: update once if the first try fails.
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >"/tmp/ssl-bf-slurm-apt.log" 2>&1; then
        apt-get update >>"/tmp/ssl-bf-slurm-apt.log" 2>&1 || die "apt-get update failed (see /tmp/ssl-bf-slurm-apt.log)"
        apt-get install -y --no-install-recommends "${missing[@]}" >>"/tmp/ssl-bf-slurm-apt.log" 2>&1 \
            || die "apt-get install ${missing[*]} failed (see /tmp/ssl-bf-slurm-apt.log)"
    fi
fi
log "packages present: $(slurmctld -V), munge $(munged -V 2>&1 | awk '{print $2}' | head -1)"

# --- 2. stop a previous cluster, fresh state ----------------------------------------------------
if [ -d "$STATE" ]; then
    SSL_BF_SLURM_STATE="$STATE" "$HERE/slurm-down.sh" --quiet || true
fi
rm -rf "$STATE"
mkdir -p "$STATE"/{ctld,log,spool,pids}
chmod 755 "$STATE"

HOST="$(hostname -s)"
NCPU="$(nproc)"
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
# Two nodes share this machine: each declares half the memory, keeping 1 GiB for the system.
NODE_MEM_MB=$(( (MEM_MB - 1024) / ${#NODES[@]} ))
CTLD_PORT=$PORT_BASE
DBD_PORT=$(( PORT_BASE + 2 ))

# --- 3. configs ---------------------------------------------------------------------------------
cat >"$STATE/slurm.conf" <<EOF
# Written by tests/cluster/slurm-up.sh; state folder $STATE
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job may start again after 10 s instead of 121 s.
AuthInfo=cred_expire=10
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/pids/slurmctld.pid
SlurmdPidFile=$STATE/pids/node-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/node-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
i=0
for n in "${NODES[@]}"; do
    echo "NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$(( PORT_BASE + 4 + i )) CPUs=$NCPU Sockets=1 CoresPerSocket=$NCPU ThreadsPerCore=1 RealMemory=$NODE_MEM_MB State=UNKNOWN" >>"$STATE/slurm.conf"
    i=$(( i + 1 ))
done
NODELIST="$(IFS=,; echo "${NODES[*]}")"
echo "PartitionName=debug Nodes=$NODELIST Default=YES MaxTime=INFINITE State=UP" >>"$STATE/slurm.conf"

DB_NAME="ssl_bf_slurm_acct"
DB_USER="ssl_bf_slurm"
DB_PASS="ssl-bf-test-only"
cat >"$STATE/slurmdbd.conf" <<EOF
# Written by tests/cluster/slurm-up.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/pids/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
EOF
chmod 600 "$STATE/slurmdbd.conf"
export SLURM_CONF="$STATE/slurm.conf"
echo "export SLURM_CONF=$STATE/slurm.conf" >"$STATE/env"

# Clients that do not read $STATE/env find the config at the default path too, unless the
# machine has its own slurm.conf (then leave it alone and rely on SLURM_CONF).
mkdir -p /etc/slurm
etc_conf_is_ours() {
    local f=/etc/slurm/slurm.conf
    if [ ! -e "$f" ] && [ ! -L "$f" ]; then return 0; fi  # absent
    [ -L "$f" ] || return 1                                # a real file: the machine's own config
    [ -e "$f" ] || return 0                                # dangling link to an old state folder
    grep -q 'Written by tests/cluster/slurm-up.sh' "$f"
}
if etc_conf_is_ours; then
    ln -sfn "$STATE/slurm.conf" /etc/slurm/slurm.conf
    echo /etc/slurm/slurm.conf >"$STATE/etc-link"
else
    log "/etc/slurm/slurm.conf belongs to this machine: clients need SLURM_CONF=$SLURM_CONF"
fi

# --- 4. node names resolve to 127.0.0.1 (the DDP master address is the first node's name) ------
need_hosts=()
for n in "${NODES[@]}"; do
    getent hosts "$n" | grep -q '^127\.' || need_hosts+=("$n")
done
if [ ${#need_hosts[@]} -gt 0 ]; then
    # Edit in place (no rename): /etc/hosts may be a bind mount.
    echo "127.0.0.1 ${need_hosts[*]} $HOSTS_MARK" >>/etc/hosts
    echo "${need_hosts[*]}" >"$STATE/hosts-added"
fi

# --- 5. munge -----------------------------------------------------------------------------------
munge_ok() { munge -n | unmunge; }
if munge_ok >/dev/null 2>&1; then
    log "munged already running (not ours; left alone)"
else
    [ -s /etc/munge/munge.key ] || { mungekey --create --force 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; \
        chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge 2>/dev/null || true
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid
    wait_for 15 munge munge_ok || die "munged did not answer within 15 s"
    cp /run/munge/munged.pid "$STATE/pids/munged.pid"
fi

# --- 6. MariaDB + slurmdbd (accounting: real job states for submitit) ---------------------------
db_ok() { mariadb -u root -e 'select 1'; }
if db_ok >/dev/null 2>&1; then
    log "MariaDB already running (not ours; left alone)"
else
    install -d -o mysql -g mysql -m 755 /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/log/mariadb-install.log" 2>&1
    install -d -o mysql -g mysql -m 755 "$STATE/mariadb"   # mariadbd writes its pid and log as mysql
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file="$STATE/mariadb/mariadb.pid" \
        --log-error="$STATE/mariadb/mariadb.log" </dev/null >"$STATE/log/mariadb.out" 2>&1 &
    echo $! >"$STATE/pids/mariadb.pid"
    wait_for 30 MariaDB db_ok || die "MariaDB did not answer within 30 s (see $STATE/mariadb/mariadb.log)"
fi
# Fresh database at every start: job ids restart at 1 with a fresh state folder, and stale
# records would report a new job as COMPLETED.
mariadb -u root <<EOF
DROP DATABASE IF EXISTS $DB_NAME;
CREATE DATABASE $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
/usr/sbin/slurmdbd
wait_for 30 slurmdbd sacctmgr -n -P list cluster format=cluster \
    || die "slurmdbd did not answer within 30 s (see $STATE/log/slurmdbd.log)"

# --- 7. slurmctld and the nodes -----------------------------------------------------------------
/usr/sbin/slurmctld -i
for n in "${NODES[@]}"; do
    mkdir -p "$STATE/spool/$n"
    /usr/sbin/slurmd -N "$n"
done

all_idle() {
    local states
    states="$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)" || return 1
    for n in "${NODES[@]}"; do
        grep -qx "$n idle" <<<"$states" || return 1
    done
}
registered() { sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; }
if ! wait_for "$READY_TIMEOUT_S" "nodes ${NODES[*]}" all_idle; then
    sinfo -N >&2 || true
    tail -n 20 "$STATE/log/slurmctld.log" >&2 || true
    die "nodes not idle within ${READY_TIMEOUT_S} s (logs in $STATE/log)"
fi
wait_for "$READY_TIMEOUT_S" "accounting for cluster $CLUSTER" registered \
    || die "cluster $CLUSTER not registered in slurmdbd within ${READY_TIMEOUT_S} s"

touch "$STATE/ready"
log "SLURM test cluster '$CLUSTER' up: nodes ${NODES[*]} (${NCPU} CPUs, ${NODE_MEM_MB} MB each), state $STATE"
