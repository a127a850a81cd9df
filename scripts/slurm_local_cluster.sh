#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the SLURM tests and for trying a sweep:
#   sudo bash scripts/slurm_local_cluster.sh start    # installs Debian's slurm + munge if needed
#   bash scripts/slurm_local_cluster.sh status
#   sudo bash scripts/slurm_local_cluster.sh stop
# Runs the daemons by hand as root, without systemd, cgroups or accounting (settings known to
# work in containers). Not for production: a real cluster has its own admins and slurm.conf.
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
PARTITION=${XAI_SLURM_PARTITION:-debug}

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: '$1' needs root (it installs packages and starts daemons);" \
            "run it with sudo" >&2
        exit 1
    fi
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    echo "installing Debian's slurmctld, slurmd, slurm-client and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    # leave ~10% of the memory to the system; jobs asking for more stay pending
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    cat >"$CONF_DIR/slurm.conf" <<EOF
# written by xai_bench scripts/slurm_local_cluster.sh: a single-node test cluster
ClusterName=xai-bench-local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SchedulerType=sched/backfill
# schedule within seconds (a test cluster, not a busy one)
SchedulerParameters=sched_interval=5,bf_interval=5
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
# finished jobs stay visible to scontrol for 5 minutes
MinJobAge=300
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged
    fi
}

wait_idle() {
    for _ in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            sinfo
            return 0
        fi
        sleep 1
    done
    echo "error: the SLURM node did not become idle within 60 s;" \
        "see $LOG_DIR/slurmctld.log and slurmd.log" >&2
    sinfo || true
    return 1
}

start() {
    need_root start
    install_packages
    write_config
    start_munge
    # (re)start the daemons so they read this configuration
    pkill -x slurmd || true
    pkill -x slurmctld || true
    sleep 1
    slurmctld
    slurmd
    wait_idle
}

stop() {
    need_root stop
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x munged || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo && squeue ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
