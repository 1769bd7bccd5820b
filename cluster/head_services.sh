#!/usr/bin/env bash
# The head's services and every node's environment, shared by cluster.yaml (a real cluster)
# and cluster/rehearsal.sh (the local rehearsal), so that the two cannot drift.
#
#   head_services.sh env          --host H [--port P] [--storage DIR] [--stage DIR] [--venv DIR]
#                                 [--ray-address A] [--ddp-backend B]
#       print the `export` lines every node needs (MLflow URI, runs/data roots, staging)
#   head_services.sh pg-start     --state DIR [--port P] [--max-trials N]
#       init (the first time) and start PostgreSQL on 127.0.0.1 with a database and user for
#       MLflow (written to DIR/postgres.uri); does nothing if it already runs
#   head_services.sh pg-stop      --state DIR [--purge]
#       stop it; --purge also deletes its data; safe to run twice
#   head_services.sh mlflow-start --host H [--port P] --state DIR --artifacts DIR
#                                 [--backend sqlite|postgresql | --backend-store-uri URI]
#                                 [--max-trials N] [--workers N]
#       start `mlflow server` unless it already runs, and wait until it answers. Backend:
#       postgresql when pg-start ran with this --state, else sqlite (DIR/mlflow.db, one machine)
#   head_services.sh mlflow-stop  --state DIR
#       stop the server started with that --state (by its pid file); safe to run twice
#
# --max-trials: the trials the cluster runs at once (GPU nodes x trials per GPU); the server's
# workers and connection pool, and PostgreSQL's max_connections, follow from it (sizing below,
# docs/RAY_MLFLOW.md). The MLflow server binds to --host only: 127.0.0.1 for the rehearsal,
# the head's private address on a cluster (never 0.0.0.0; reach it through an SSH tunnel).
# PostgreSQL listens on 127.0.0.1 only: only the MLflow server beside it talks to it.
set -euo pipefail

usage() { sed -n '2,25p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
command=$1
shift

host=127.0.0.1
port=""
state=""
artifacts=""
storage=""
stage=""
venv=""
ray_address=""
ddp_backend=""
workers=""
backend=""
backend_uri=""
max_trials=8
purge=false
start_timeout=${MLFLOW_START_TIMEOUT:-180}
while [ $# -gt 0 ]; do
    case $1 in
        --host) host=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --state) state=$2; shift 2 ;;
        --artifacts) artifacts=$2; shift 2 ;;
        --storage) storage=$2; shift 2 ;;
        --stage) stage=$2; shift 2 ;;
        --venv) venv=$2; shift 2 ;;
        --ray-address) ray_address=$2; shift 2 ;;
        --ddp-backend) ddp_backend=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --backend) backend=$2; shift 2 ;;
        --backend-store-uri) backend_uri=$2; shift 2 ;;
        --max-trials) max_trials=$2; shift 2 ;;
        --purge) purge=true; shift ;;
        *) echo "head_services.sh: unknown option '$1'" >&2; usage ;;
    esac
done
case $max_trials in '' | *[!0-9]* | 0) echo "head_services.sh: --max-trials takes a positive integer, not '$max_trials'" >&2; exit 2 ;; esac
case $backend in '' | sqlite | postgresql) ;; *) echo "head_services.sh: --backend is sqlite or postgresql, not '$backend'" >&2; exit 2 ;; esac

# $PYTHON (the rehearsal's .venv/bin/python, ~/venv/bin/python on a cluster) and the mlflow
# beside it, unless $MLFLOW_BIN says otherwise.
python=${PYTHON:-python3}
mlflow_bin=${MLFLOW_BIN:-$(dirname "$(command -v "$python")")/mlflow}
[ -x "$mlflow_bin" ] || mlflow_bin=mlflow

# Sizing from --max-trials N (docs/RAY_MLFLOW.md). A trial has at most one request in flight
# (its logging is synchronous), so N trials make at most N concurrent requests, plus a few from
# study drivers and the UI (8). Each uvicorn worker runs at most 40 request threads (anyio's
# default limiter), each holding at most one database connection, and the kernel may hand
# every connection to one worker, so each worker's pool holds min(N + 8, 40): no request waits
# for a connection. Workers: one per 32 trials for CPU, at least 2, at most the head's cores.
# PostgreSQL then needs workers x that + 10 connections (psql, migrations, its reserve).
sizing() {
    local cpus
    cpus=$(nproc)
    size_workers=$(( (max_trials + 31) / 32 ))
    [ "$size_workers" -lt 2 ] && size_workers=2
    [ "$size_workers" -gt "$cpus" ] && [ "$cpus" -ge 2 ] && size_workers=$cpus
    [ -n "$workers" ] && size_workers=$workers
    size_conns=$(( max_trials + 8 ))
    [ "$size_conns" -gt 40 ] && size_conns=40
    size_pool=$(( (size_conns + 1) / 2 ))
    size_overflow=$(( size_conns - size_pool ))
    size_max_connections=$(( size_workers * size_conns + 10 ))
    [ "$size_max_connections" -lt 100 ] && size_max_connections=100
    true
}

# Exit 0 when $1 answers HTTP 200 within 2 s.
answers() {
    "$python" - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

# Pids of every process in session $1 (the server and the workers it forked).
session_pids() { ps -eo pid=,sid= | awk -v sid="$1" '$2 == sid {print $1}'; }

# pg_start, pg_stop, pg_check: PostgreSQL, the head's tracking store.
# shellcheck source=cluster/postgres.sh
. "$(dirname "$0")/postgres.sh"

case $command in
env)
    port=${port:-${MLFLOW_PORT:-5000}}
    [ -n "$venv" ] && echo "export PATH=$venv/bin:\$PATH"
    echo "export MLFLOW_TRACKING_URI=http://$host:$port"
    # --storage: the root every node sees (NFS/EFS on a cluster): runs/ and data/ go there.
    if [ -n "$storage" ]; then
        echo "export USLEARN_RUNS=$storage/runs"
        echo "export USLEARN_DATA=$storage/data"
    fi
    # Node-local copy of the image store (uslearn/data/staging.py): random reads of a memory
    # map over NFS are slow.
    [ -n "$stage" ] && echo "export USLEARN_STAGE_DIR=$stage"
    [ -n "$ray_address" ] && echo "export RAY_ADDRESS=$ray_address"
    # torch.distributed backend of DDP trials (default: NCCL with GPUs, gloo without).
    [ -n "$ddp_backend" ] && echo "export USLEARN_DDP_BACKEND=$ddp_backend"
    true
    ;;
pg-start) pg_start ;;
pg-stop) pg_stop ;;
mlflow-start)
    [ -n "$state" ] && [ -n "$artifacts" ] || { echo "mlflow-start needs --state and --artifacts" >&2; exit 2; }
    port=${port:-${MLFLOW_PORT:-5000}}
    mkdir -p "$state" "$artifacts"
    state=$(cd "$state" && pwd)
    artifacts=$(cd "$artifacts" && pwd)
    pidfile=$state/server.pid
    url=http://$host:$port
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "MLflow server already running (pid $(cat "$pidfile")) at $url"
        exit 0
    fi
    if answers "$url/health"; then
        echo "head_services.sh: something else already answers at $url; choose another --port" >&2
        exit 1
    fi
    # The store: PostgreSQL when this state folder has one (pg-start), so that a restart
    # without --backend cannot open an empty sqlite file instead; sqlite on the local disk
    # (never on NFS) for one machine.
    if [ -z "$backend_uri" ]; then
        [ -z "$backend" ] && { [ -f "$state/postgres.uri" ] && backend=postgresql || backend=sqlite; }
        if [ "$backend" = postgresql ]; then
            [ -f "$state/postgres.uri" ] || { echo "head_services.sh: no PostgreSQL in $state: run head_services.sh pg-start --state $state first" >&2; exit 1; }
            backend_uri=$(cat "$state/postgres.uri")
        else
            backend_uri=sqlite:///$state/mlflow.db
        fi
    fi
    sizing
    shown=$(echo "$backend_uri" | sed 's#//[^@]*@#//#')  # without the password
    case $backend_uri in
        postgresql*) pg_check "$backend_uri" $(( size_workers * size_conns )) ;;
    esac
    # The URI goes through the environment, not argv: ps would show its password. setsid:
    # the server gets its own session, so mlflow-stop ends its workers too. Its job runner
    # (GenAI evaluation jobs; the studies start none) would add seven processes.
    MLFLOW_BACKEND_STORE_URI=$backend_uri \
        MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=$size_pool \
        MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=$size_overflow \
        MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE=${MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE:-1800} \
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
        setsid "$mlflow_bin" server \
        --artifacts-destination "$artifacts" \
        --host "$host" --port "$port" --workers "$size_workers" \
        > "$state/server.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    echo "$shown" > "$state/server.store"
    deadline=$((SECONDS + start_timeout))
    until answers "$url/health"; do
        if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "head_services.sh: the MLflow server exited; the end of $state/server.log:" >&2
            tail -n 20 "$state/server.log" >&2
            rm -f "$pidfile"
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "head_services.sh: the MLflow server did not answer at $url within ${start_timeout} s (log: $state/server.log)" >&2
            exit 1
        fi
        sleep 1
    done
    echo "MLflow server at $url (pid $(cat "$pidfile"), store $shown, $size_workers workers x pool $size_pool+$size_overflow, artifacts $artifacts)"
    ;;
mlflow-stop)
    [ -n "$state" ] || { echo "mlflow-stop needs --state" >&2; exit 2; }
    pidfile=$state/server.pid
    if [ ! -f "$pidfile" ]; then
        echo "MLflow server: not running (no $pidfile)"
        exit 0
    fi
    sid=$(cat "$pidfile")
    pids=$(session_pids "$sid")
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 20); do
        [ -z "$(session_pids "$sid")" ] && break
        sleep 1
    done
    pids=$(session_pids "$sid")
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    rm -f "$pidfile"
    echo "MLflow server stopped (pid $sid)"
    ;;
*)
    usage
    ;;
esac
