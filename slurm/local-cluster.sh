#!/usr/bin/env bash
# local-cluster.sh start|stop|status — a real Slurm cluster on this machine, so
# the project can test SLURM job submission end to end: node `localhost` in the
# default partition `debug`, and a second node `node1` on the same host, which
# with `localhost` forms partition `twonodes` for multi-node jobs.
#
# Design decisions (why, not what):
#
# * Everything lives in one state directory, ${LOCAL_SLURM_DIR:-/tmp/local-slurm}:
#   slurm.conf, pid files, logs, slurmctld state, slurmd spool. Deleting that
#   directory (after `stop`) resets the cluster completely.
# * Clients find the cluster through SLURM_CONF=<state dir>/slurm.conf (printed
#   by `start`). Because subprocesses of tests do not always inherit a custom
#   environment, `start` ALSO writes /etc/slurm/slurm.conf so that a plain
#   `sbatch` works — but only when that file is absent or was written by this
#   script earlier (marker line), so a real site configuration is never
#   overwritten. The daemons themselves are always started with -f <state conf>.
# * Authentication uses the system munged (socket /run/munge, key
#   /etc/munge/munge.key), because the Slurm client tools only talk to the
#   default munge socket. If munged already runs we reuse it and never stop it;
#   if we start it, its pid is recorded in <state dir>/munged.pid and `stop`
#   stops it again.
# * slurmctld starts with -c (clean state): this is a throw-away test cluster,
#   and recovering jobs from an earlier run (maybe after a reboot) would leave
#   surprise jobs in the queue of the next test session.
# * Job processes (slurmstepd) outlive slurmd, so `stop` first cancels all jobs
#   and then kills any slurmstepd still carrying our SLURM_CONF in its
#   environment — that identifies exactly the processes this cluster spawned.
# * Ports are Slurm's defaults (6817 slurmctld, 6818 slurmd of `localhost`) plus
#   6828 for the slurmd of `node1`: only one such cluster per machine.
# * Two slurmds on one host (`slurmd -N <node>`): each node has its own Port,
#   and the slurmd spool, pid and log files carry the node name (%n). Debian's
#   Slurm 22.05 does this without being built with --enable-multiple-slurmd.
#   The second node is declared BEFORE `localhost`: while Slurm reads the node
#   lines, looking up any name returns the only node read so far if that one is
#   called `localhost` (node_conf.c, _find_node_record), so with `localhost`
#   first the next node is a "Duplicated NodeHostName" and every daemon dies.
# * Node names: a job's first node (sorted: `localhost` before `node1`) is where
#   the training template's torchrun rendezvous listens, so its name must
#   resolve; `node1` is only a name for Slurm (NodeAddr=127.0.0.1).
# * `debug` holds `localhost` only, so one-node jobs see the machine's CPUs once
#   (each node declares all CPUs; a 2-node job runs both "nodes" on one host).
#
# Settings below were measured to matter with Debian 12's Slurm 22.05 in a
# container without systemd/cgroup delegation: see comments in write_conf.
#
# Exit codes: 0 ok; 1 error; 3 `status` found the cluster down.
set -euo pipefail

STATE_DIR="${LOCAL_SLURM_DIR:-/tmp/local-slurm}"
CONF="$STATE_DIR/slurm.conf"
SYSTEM_CONF=/etc/slurm/slurm.conf
MARKER="# written by slurm/local-cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)
TIMEOUT="${LOCAL_SLURM_TIMEOUT:-60}"
# The nodes and their slurmd ports; the first is the default partition's node.
NODES=(localhost node1)
declare -A NODE_PORT=([localhost]=6818 [node1]=6828)
MUNGE_KEY=/etc/munge/munge.key

log() { echo "local-slurm: $*"; }
die() { echo "local-slurm: error: $*" >&2; exit 1; }

# is_proc PID NAME: PID is alive and really is NAME (guards against a stale
# pid file whose pid got reused by something else). Zombies do not count: a
# killed daemon's parent is init, which here may reap it only much later.
is_proc() {
    [[ -n $1 && "$(cat "/proc/$1/comm" 2>/dev/null)" == "$2" ]] &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# pid_of FILE NAME: print the pid recorded in FILE if that process is NAME.
pid_of() {
    local pid
    # The daemon deletes its pid file on exit, possibly while we read it.
    pid=$(tr -dc '0-9' 2>/dev/null <"$1") || return 1
    is_proc "$pid" "$2" && echo "$pid"
}
pid_alive() { pid_of "$@" >/dev/null; }

# stop_pid FILE NAME: TERM, wait up to 10 s (slurmctld saves state on exit), KILL.
stop_pid() {
    local file=$1 name=$2 pid i
    if ! pid=$(pid_of "$file" "$name"); then
        rm -f "$file"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        is_proc "$pid" "$name" || break
        sleep 0.1
    done
    if is_proc "$pid" "$name"; then
        log "$name ($pid) ignored SIGTERM, killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
    log "stopped $name ($pid)"
}

# tree_of PID: all descendants of PID.
tree_of() {
    local child
    for child in $(pgrep -P "$1" || true); do
        echo "$child"
        tree_of "$child"
    done
}

# our_stepds: pids of job step daemons spawned by this cluster (they inherit
# SLURM_CONF from slurmd, see cmd_start).
our_stepds() {
    local pid
    for pid in $(pgrep -x slurmstepd || true); do
        if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "SLURM_CONF=$CONF"; then
            echo "$pid"
        fi
    done
}

# --------------------------------------------------------------------------
# install / munge

ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    if ((EUID != 0)); then
        die "missing Debian packages; as root run: apt-get install -y ${missing[*]}"
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet: update only on failure.
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$STATE_DIR/apt.log" 2>&1; then
        apt-get update -q >>"$STATE_DIR/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$STATE_DIR/apt.log" 2>&1 ||
            die "apt-get install ${missing[*]} failed, see $STATE_DIR/apt.log"
    fi
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

ensure_munge() {
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key $MUNGE_KEY"
        install -d -o munge -g munge -m 0700 /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY"
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    # munged refuses to run with a key readable by anyone but its owner.
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"

    if munge_works; then
        return 0
    fi
    # No systemd here to create the runtime directories munged expects.
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    log "starting munged"
    # --force: a stale socket from a killed munged would otherwise block startup.
    runuser -u munge -- /usr/sbin/munged --force >"$STATE_DIR/munged.out" 2>&1 ||
        die "munged failed to start, see $STATE_DIR/munged.out and /var/log/munge/munged.log"
    local i
    for ((i = 0; i < 50; i++)); do
        munge_works && break
        sleep 0.1
    done
    munge_works || die "munged does not answer, see /var/log/munge/munged.log"
    cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
}

# --------------------------------------------------------------------------
# configuration

write_conf() {
    local hw cpus mem real defmem topo
    # slurmd -C reports what slurmd will detect; the node must not be declared
    # bigger than that or it registers as INVALID/DRAIN.
    hw=$(slurmd -C 2>/dev/null | head -n1) || true
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [[ -n $cpus && -n $mem ]] || die "could not parse 'slurmd -C' output: $hw"
    topo=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$hw" || true)
    # Leave headroom: memory reported by slurmd fluctuates a little between
    # runs, and the OS plus the daemons need some too.
    real=$((mem * 9 / 10))
    # Without a default, a job that asks for no memory gets the whole node
    # and everything else queues behind it. A quarter of the node per CPU
    # lets two default jobs run side by side on two cores.
    defmem=$((real / cpus / 2))

    cat >"$CONF.tmp" <<EOF
$MARKER — state dir $STATE_DIR
# Regenerated by every 'start'; edit the script, not this file.
ClusterName=localcluster
SlurmctldHost=localhost(127.0.0.1)
# One node, run entirely as root: no slurm user, no permission juggling.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Credentials of a requeued job must expire before the job can restart on
# the same node; the default 120 s makes requeue tests crawl.
AuthInfo=cred_expire=20
CryptoType=crypto/munge
MpiDefault=none
# Debian's default MailProg is not installed; silences an error at startup.
MailProg=/bin/true
SwitchType=switch/none
# No cgroup delegation in containers: track processes via /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Defaults batch submissions by up to 3 s and runs the scheduler only every
# 30-60 s, so a requeued job (eligible again after cred_expire) would idle for
# up to a minute. Scheduling one node every 2 s costs nothing.
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
# Share the node between jobs by core and memory.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
JobRequeue=1
# Fast turnaround for tests: short grace after SIGTERM, and finished jobs stay
# visible to 'scontrol show job' for MinJobAge seconds (no accounting here).
KillWait=5
MinJobAge=60
SlurmdTimeout=120
SlurmctldTimeout=60
# A node that was down comes back by itself once slurmd registers again.
ReturnToService=2
StateSaveLocation=$STATE_DIR/slurmctld
# One slurmd per node on this host: %n is the node name (see the header).
SlurmdSpoolDir=$STATE_DIR/slurmd-%n
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# node1 before localhost: see the header. Both are this host, each with all its CPUs.
NodeName=node1 NodeAddr=127.0.0.1 Port=${NODE_PORT[node1]} CPUs=$cpus $topo RealMemory=$real State=UNKNOWN
NodeName=localhost NodeAddr=127.0.0.1 Port=${NODE_PORT[localhost]} CPUs=$cpus $topo RealMemory=$real State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=twonodes Nodes=localhost,node1 MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

# Make plain `sbatch` (no SLURM_CONF) reach this cluster, unless a real
# configuration is in place.
install_system_conf() {
    if [[ ! -e $SYSTEM_CONF ]] || grep -qF "$MARKER" "$SYSTEM_CONF"; then
        install -d /etc/slurm
        cp "$CONF" "$SYSTEM_CONF"
    else
        log "note: $SYSTEM_CONF is not ours, left alone; clients need SLURM_CONF=$CONF"
    fi
}

# --------------------------------------------------------------------------
# commands

slurmd_pidfile() { echo "$STATE_DIR/slurmd-$1.pid"; }

# slurmd pid files: one per node, and slurmd.pid of a cluster started by the
# one-node version of this script (so `stop` still stops that one).
slurmd_pidfiles() {
    local node
    for node in "${NODES[@]}"; do slurmd_pidfile "$node"; done
    echo "$STATE_DIR/slurmd.pid"
}

daemons_up() {
    local node
    pid_alive "$STATE_DIR/slurmctld.pid" slurmctld || return 1
    for node in "${NODES[@]}"; do
        pid_alive "$(slurmd_pidfile "$node")" slurmd || return 1
    done
}

node_state() { SLURM_CONF=$CONF sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n1; }

# all_nodes_ready: print node=state for every node; true if all are idle or busy.
all_nodes_ready() {
    local node state states=() rc=0
    for node in "${NODES[@]}"; do
        state=$(node_state "$node")
        states+=("$node=${state:-no answer}")
        [[ $state =~ ^(idle|mixed|allocated|completing) ]] || rc=1
    done
    echo "${states[*]}"
    return $rc
}

# A second slurmctld/slurmd (another state dir, or a distro service) would
# hold the default ports: ours would die at once while sinfo happily answers
# from the other cluster, so refuse instead of reporting a false success.
check_no_foreign_daemons() {
    local d f pid ours=" "
    for f in "$STATE_DIR/slurmctld.pid" $(slurmd_pidfiles); do
        ours+="$(pid_of "$f" slurmctld || pid_of "$f" slurmd || true) "
    done
    for d in slurmctld slurmd; do
        for pid in $(pgrep -x "$d" || true); do
            [[ $ours == *" $pid "* ]] && continue
            is_proc "$pid" "$d" || continue
            die "another $d is running (pid $pid: $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null)); stop it first (a different LOCAL_SLURM_DIR?)"
        done
    done
}

print_env_hint() {
    echo "export SLURM_CONF=$CONF"
}

cmd_start() {
    local node
    if [[ -f $CONF ]] && daemons_up && all_nodes_ready >/dev/null; then
        log "already running (state dir $STATE_DIR)"
        ((EUID != 0)) || install_system_conf
        print_env_hint
        return 0
    fi
    ((EUID == 0)) || {
        command -v slurmd >/dev/null || die "missing Debian packages; as root run: apt-get install -y ${PACKAGES[*]}"
        die "start must run as root (slurmd launches jobs as root, munged runs as the munge user)"
    }
    mkdir -p "$STATE_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
    ensure_packages
    ensure_munge
    # The daemons and every job step inherit this; `stop` relies on it to
    # find leftover job processes.
    export SLURM_CONF=$CONF

    check_no_foreign_daemons
    # A one-node cluster of an earlier version of this script: its slurmctld
    # knows one node only, so restart it with the config of today.
    if pid_alive "$STATE_DIR/slurmd.pid" slurmd; then
        log "restarting the one-node cluster of an earlier version with ${#NODES[@]} nodes"
        cmd_stop
        ensure_munge
    fi
    if ! pid_alive "$STATE_DIR/slurmctld.pid" slurmctld; then
        # Only regenerate the config while slurmctld is down; a running
        # controller keeps the config it read at startup anyway.
        write_conf
        install_system_conf
        log "starting slurmctld"
        slurmctld -c -f "$CONF" >"$STATE_DIR/slurmctld.out" 2>&1 ||
            die "slurmctld failed to start, see $STATE_DIR/slurmctld.out and $STATE_DIR/slurmctld.log"
    fi
    for node in "${NODES[@]}"; do
        if ! pid_alive "$(slurmd_pidfile "$node")" slurmd; then
            log "starting slurmd of node $node"
            slurmd -f "$CONF" -N "$node" >"$STATE_DIR/slurmd-$node.out" 2>&1 ||
                die "slurmd of $node failed to start, see $STATE_DIR/slurmd-$node.out and $STATE_DIR/slurmd-$node.log"
        fi
    done

    local states="" started=$SECONDS deadline=$((SECONDS + TIMEOUT))
    while ((SECONDS < deadline)); do
        # Daemons write their pid files a moment after forking: allow 3 s.
        ((SECONDS - started < 3)) || daemons_up ||
            die "slurmctld or a slurmd exited during startup; see $STATE_DIR/slurmctld.log and $STATE_DIR/slurmd-*.log"
        states=$(all_nodes_ready) && break
        for node in "${NODES[@]}"; do
            # Slurm keeps a node DOWN after an unexpected restart; we know it is fine.
            if [[ "$(node_state "$node")" =~ ^(down|drain) ]]; then
                scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
            fi
        done
        sleep 0.5
    done
    all_nodes_ready >/dev/null ||
        die "nodes not idle after ${TIMEOUT}s ($states); see $STATE_DIR/slurmctld.log and $STATE_DIR/slurmd-*.log"
    log "cluster up: $states; partitions debug (localhost, default) and twonodes (localhost,node1)"
    print_env_hint
}

cmd_stop() {
    local any=0 pid i jobs f
    if ((EUID != 0)); then
        for f in "$STATE_DIR/slurmctld.pid:slurmctld" "$STATE_DIR/munged.pid:munged" $(slurmd_pidfiles | sed 's/$/:slurmd/'); do
            if pid_alive "${f%:*}" "${f##*:}"; then die "stop must run as root (the daemons run as root and munge)"; fi
        done
    fi
    if [[ -f $CONF ]] && pid_alive "$STATE_DIR/slurmctld.pid" slurmctld; then
        # Cancel jobs so their processes do not outlive the cluster.
        jobs=$(SLURM_CONF=$CONF squeue -h -o '%i' 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling jobs: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086  # one argument per job id
            SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                [[ -z "$(SLURM_CONF=$CONF squeue -h -t running,completing -o '%i' 2>/dev/null)" ]] && break
                sleep 0.2
            done
        fi
    fi
    for f in $(slurmd_pidfiles); do
        if pid_alive "$f" slurmd; then any=1; fi
        stop_pid "$f" slurmd
    done
    if pid_alive "$STATE_DIR/slurmctld.pid" slurmctld; then any=1; fi
    stop_pid "$STATE_DIR/slurmctld.pid" slurmctld
    # Job steps outlive slurmd; give cancelled ones a moment to finish, then
    # kill what is left.
    for ((i = 0; i < 50; i++)); do
        [[ -z "$(our_stepds)" ]] && break
        sleep 0.2
    done
    for pid in $(our_stepds); do
        log "killing leftover slurmstepd $pid and its job processes"
        # shellcheck disable=SC2046  # one argument per pid
        kill -KILL "$pid" $(tree_of "$pid") 2>/dev/null || true
    done
    if pid_alive "$STATE_DIR/munged.pid" munged; then
        any=1
        stop_pid "$STATE_DIR/munged.pid" munged
    fi
    rm -f "$STATE_DIR/munged.pid"
    ((any)) || log "nothing was running"
}

cmd_status() {
    local up=0 node
    if pid_alive "$STATE_DIR/slurmctld.pid" slurmctld; then
        echo "slurmctld: running (pid $(pid_of "$STATE_DIR/slurmctld.pid" slurmctld))"
    else
        echo "slurmctld: not running"
    fi
    for node in "${NODES[@]}"; do
        if pid_alive "$(slurmd_pidfile "$node")" slurmd; then
            echo "slurmd of $node: running (pid $(pid_of "$(slurmd_pidfile "$node")" slurmd))"
        else
            echo "slurmd of $node: not running"
        fi
    done
    if munge_works; then
        if pid_alive "$STATE_DIR/munged.pid" munged; then
            echo "munged: running (started by this script)"
        else
            echo "munged: running (not ours)"
        fi
    else
        echo "munged: not running"
    fi
    if daemons_up && [[ -f $CONF ]]; then
        if SLURM_CONF=$CONF sinfo; then up=1; fi
    fi
    if ((up)); then
        print_env_hint
        return 0
    fi
    echo "cluster: down (state dir $STATE_DIR)"
    return 3
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status   (state dir: \$LOCAL_SLURM_DIR, default /tmp/local-slurm)" >&2
    exit 2
    ;;
esac
