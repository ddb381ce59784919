#!/usr/bin/env bash
# Start / stop / inspect a real single-node SLURM cluster on this machine.
#
#   bash tests/cluster/slurm_cluster.sh start  [SCRATCH_DIR]
#   bash tests/cluster/slurm_cluster.sh stop   [SCRATCH_DIR]
#   bash tests/cluster/slurm_cluster.sh status [SCRATCH_DIR]
#
# Meant for tests and CI on Debian 12 (run as root, no systemd needed).
# SCRATCH_DIR (default /tmp/hpcrobust-slurm) holds the controller state,
# slurmd spool, pid files and logs.  /etc/slurm/slurm.conf is (re)written
# on every start that has to launch slurmctld.
#
# Environment knobs:
#   SLURM_CLUSTER_TIMEOUT   seconds to wait for the node to become idle (60)
#   SLURM_CLUSTER_NO_APT=1  never call apt-get (fail if packages are missing)
#   SLURM_CLUSTER_CRED_EXPIRE  AuthInfo cred_expire in s (10); also the delay
#                           before a requeued job becomes eligible again
set -euo pipefail

ACTION="${1:-}"
SCRATCH="${2:-/tmp/hpcrobust-slurm}"
TIMEOUT="${SLURM_CLUSTER_TIMEOUT:-60}"

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MUNGE_RUN=/run/munge
MUNGE_PID="$MUNGE_RUN/munged.pid"

NODE="$(hostname -s)"
CTLD_PID="$SCRATCH/run/slurmctld.pid"
SLURMD_PID="$SCRATCH/run/slurmd.pid"
MUNGE_MARK="$SCRATCH/run/munged.started-by-us"
EPILOG="$SCRATCH/epilog.sh"
CRED_EXPIRE="${SLURM_CLUSTER_CRED_EXPIRE:-10}"

log() { echo "[slurm_cluster] $*" >&2; }
die() { echo "[slurm_cluster] ERROR: $*" >&2; exit 1; }

usage() {
    echo "usage: $0 {start|stop|status} [SCRATCH_DIR]   (default SCRATCH_DIR=/tmp/hpcrobust-slurm)" >&2
    exit 2
}

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
pid_alive() {  # pid_alive PIDFILE -> 0 if the pid in PIDFILE is a live process
    local f="$1" pid
    [[ -s "$f" ]] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

node_state() {  # prints the node state as sinfo reports it (empty if unreachable)
    timeout 10 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true
}

node_healthy() {
    local st
    st="$(node_state)"
    # Usable states; a trailing '*' means "not responding", '~' powered off, etc.
    [[ "$st" =~ ^(idle|mixed|allocated|completing)$ ]]
}

munge_ok() {
    command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

have_packages() {
    [[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/sbin/munged ]] &&
        command -v sinfo >/dev/null && command -v srun >/dev/null
}

# --------------------------------------------------------------------------
# install
# --------------------------------------------------------------------------
install_packages() {
    have_packages && return 0
    [[ "${SLURM_CLUSTER_NO_APT:-0}" == 1 ]] && die "slurm/munge not installed and SLURM_CLUSTER_NO_APT=1"
    [[ $EUID -eq 0 ]] || die "must run as root to install packages"
    local pkgs=(slurmctld slurmd slurm-client munge)
    # Without systemd the maintainer scripts cannot start the services.  Make
    # invoke-rc.d skip the start (exit 101) if no policy is installed yet, so
    # dpkg does not end up with half-configured packages.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added_policy=1
    fi
    log "installing ${pkgs[*]} ..."
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${pkgs[@]}" >"$SCRATCH/apt.log" 2>&1; then
        if ! have_packages; then
            log "apt-get install failed; running apt-get update and retrying"
            apt-get update >>"$SCRATCH/apt.log" 2>&1 || true
            apt-get install -y --no-install-recommends "${pkgs[@]}" >>"$SCRATCH/apt.log" 2>&1 || true
        fi
        # A failed service start leaves packages unconfigured; finish that, ignoring errors.
        dpkg --configure -a >>"$SCRATCH/apt.log" 2>&1 || true
    fi
    [[ $added_policy == 1 ]] && rm -f "$policy"
    have_packages || die "could not install ${pkgs[*]} (see $SCRATCH/apt.log)"
}

# --------------------------------------------------------------------------
# munge
# --------------------------------------------------------------------------
start_munge() {
    if munge_ok; then
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        mkdir -p /etc/munge
        chown munge:munge /etc/munge && chmod 700 /etc/munge
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    fi
    mkdir -p "$MUNGE_RUN" /var/log/munge /var/lib/munge
    chown munge:munge "$MUNGE_RUN" /var/log/munge /var/lib/munge
    chmod 755 "$MUNGE_RUN"
    # stale pid/socket from a previous (dead) munged make munged refuse to start
    if [[ -e "$MUNGE_PID" ]] && ! pid_alive "$MUNGE_PID"; then
        rm -f "$MUNGE_PID" "$MUNGE_RUN"/munge.socket.2*
    fi
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start"
    touch "$MUNGE_MARK"
    for _ in $(seq 1 50); do
        munge_ok && return 0
        sleep 0.2
    done
    die "munged started but 'munge -n | unmunge' does not work"
}

# --------------------------------------------------------------------------
# slurm.conf
# --------------------------------------------------------------------------
# MPICH names its shared-memory segment after the PMI kvs name (= JOBID.STEP),
# so a requeued job reuses the name.  If a rank was SIGKILLed the segment is
# left behind in /dev/shm and the next MPI_Init on it fails ("Message
# truncated") or hangs.  The epilog removes such segments once no process
# maps or holds them open.  It must always exit 0 (a failing epilog drains
# the node).
write_epilog() {
    cat >"$EPILOG" <<'EOF'
#!/bin/bash
# Generated by tests/cluster/slurm_cluster.sh -- runs as root after each job.
shopt -s nullglob
files=(/dev/shm/mpich_* /dev/shm/ucx_*)
((${#files[@]})) || exit 0
inuse="$(cat /proc/[0-9]*/maps 2>/dev/null; ls -l /proc/[0-9]*/fd 2>/dev/null)"
for f in "${files[@]}"; do
    grep -qF -- "$f" <<<"$inuse" || rm -f -- "$f"
done
exit 0
EOF
    chmod 755 "$EPILOG"
}

write_conf() {
    local mem_kb real_mem cpus
    mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    real_mem=$(( mem_kb / 1024 - 2048 ))
    (( real_mem < 512 )) && real_mem=512
    cpus="$(nproc)"
    mkdir -p "$CONF_DIR"
    write_epilog
    cat >"$CONF" <<EOF
# Generated by hpcrobust tests/cluster/slurm_cluster.sh -- single-node CI cluster.
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start
# again (begin_time = requeue time + cred_expire + 1; default 120 s).
AuthInfo=cred_expire=${CRED_EXPIRE}

StateSaveLocation=${SCRATCH}/state
SlurmdSpoolDir=${SCRATCH}/spool
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${SCRATCH}/log/slurmctld.log
SlurmdLogFile=${SCRATCH}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Removes stale MPICH/UCX shared-memory segments after every job (incl. requeue).
Epilog=${EPILOG}

ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none

SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# re-evaluate pending (e.g. requeued) jobs every 1-2 s instead of every 30-60 s
SchedulerParameters=bf_interval=1,sched_interval=2
MpiDefault=pmi2
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0

NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# --------------------------------------------------------------------------
# actions
# --------------------------------------------------------------------------
do_status() {
    local rc=0
    if munge_ok; then echo "munged:     running"; else echo "munged:     NOT running"; rc=1; fi
    if pid_alive "$CTLD_PID"; then echo "slurmctld:  running (pid $(cat "$CTLD_PID"))"; else echo "slurmctld:  NOT running"; rc=1; fi
    if pid_alive "$SLURMD_PID"; then echo "slurmd:     running (pid $(cat "$SLURMD_PID"))"; else echo "slurmd:     NOT running"; rc=1; fi
    local st
    st="$(node_state)"
    echo "node ${NODE}: ${st:-<unreachable>}"
    node_healthy || rc=1
    echo "scratch:    $SCRATCH"
    return $rc
}

wait_idle() {
    local deadline=$(( SECONDS + TIMEOUT )) st=""
    while (( SECONDS < deadline )); do
        st="$(node_state)"
        if [[ "$st" =~ ^(idle|mixed|allocated)$ ]]; then
            log "node ${NODE} is ${st}"
            return 0
        fi
        # A node left DOWN/DRAIN by an earlier run: bring it back.
        if [[ "$st" =~ ^(down|drained|draining|down\*|drained\*)$ ]]; then
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
        fi
        sleep 1
    done
    log "last node state: '${st:-<sinfo failed>}'"
    log "---- tail $SCRATCH/log/slurmctld.log"; tail -n 20 "$SCRATCH/log/slurmctld.log" >&2 2>/dev/null || true
    log "---- tail $SCRATCH/log/slurmd.log";    tail -n 20 "$SCRATCH/log/slurmd.log" >&2 2>/dev/null || true
    die "SLURM node ${NODE} did not become idle within ${TIMEOUT}s"
}

do_start() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    mkdir -p "$SCRATCH"/{state,spool,run,log}

    if pid_alive "$CTLD_PID" && pid_alive "$SLURMD_PID" && munge_ok && node_healthy; then
        log "already running and healthy (node ${NODE}: $(node_state))"
        return 0
    fi

    install_packages
    start_munge

    if ! pid_alive "$CTLD_PID"; then
        # Refuse to fight with a controller that is not ours (e.g. other scratch dir).
        if pgrep -x slurmctld >/dev/null 2>&1; then
            die "a slurmctld not started from $SCRATCH is running (pid $(pgrep -x slurmctld | tr '\n' ' ')); stop it first"
        fi
        write_conf
        rm -f "$CTLD_PID"
        log "starting slurmctld"
        /usr/sbin/slurmctld || die "slurmctld failed to start (see $SCRATCH/log/slurmctld.log)"
    fi
    if ! pid_alive "$SLURMD_PID"; then
        if pgrep -x slurmd >/dev/null 2>&1; then
            die "a slurmd not started from $SCRATCH is running (pid $(pgrep -x slurmd | tr '\n' ' ')); stop it first"
        fi
        rm -f "$SLURMD_PID"
        log "starting slurmd"
        /usr/sbin/slurmd || die "slurmd failed to start (see $SCRATCH/log/slurmd.log)"
    fi
    wait_idle
}

kill_pidfile() {  # kill_pidfile NAME PIDFILE
    local name="$1" f="$2" pid
    if ! pid_alive "$f"; then
        rm -f "$f"
        return 0
    fi
    pid="$(tr -dc '0-9' <"$f")"
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$f"; return 0; }
        sleep 0.1
    done
    log "$name did not exit after 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
}

do_stop() {
    # Cancel whatever is still queued/running so no slurmstepd / job processes
    # outlive the cluster (this is a throw-away test cluster).
    if pid_alive "$CTLD_PID"; then
        local jobs
        jobs="$(timeout 10 squeue -h -o '%i' 2>/dev/null | tr '\n' ' ' || true)"
        if [[ -n "${jobs// /}" ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            for _ in $(seq 1 30); do
                [[ -z "$(timeout 10 squeue -h -t R,CG -o '%i' 2>/dev/null || true)" ]] && break
                sleep 0.5
            done
        fi
    fi
    kill_pidfile slurmd "$SLURMD_PID"
    kill_pidfile slurmctld "$CTLD_PID"
    if [[ -e "$MUNGE_MARK" ]]; then
        kill_pidfile munged "$MUNGE_PID"
        rm -f "$MUNGE_MARK"
    fi
    log "stopped"
}

case "$ACTION" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) usage ;;
esac
