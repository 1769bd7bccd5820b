#!/usr/bin/env bash
# The head's services and every node's environment, shared by cluster.yaml (a real cluster)
# and cluster/up.sh (the local rehearsal), so that the two cannot drift.
#
#   head_services.sh env          --host H [--port P] [--storage DIR] [--stage DIR] [--venv DIR]
#                                 [--ray-address A] [--ddp-backend B]
#       print the `export` lines every node needs (MLflow URI, runs/data roots, staging)
#   head_services.sh mlflow-start --host H [--port P] --state DIR --artifacts DIR [--workers N]
#       start `mlflow server` (SQL backend, artifacts served from --artifacts-destination)
#       unless it already runs, and wait until it answers
#   head_services.sh mlflow-stop  --state DIR
#       stop the server started with that --state (by its pid file); safe to run twice
#
# The server binds to --host only: 127.0.0.1 for the rehearsal, the head's private address on
# a cluster (never 0.0.0.0; reach it through an SSH tunnel).
set -euo pipefail

usage() { sed -n '2,15p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
command=$1
shift

host=127.0.0.1
port=${MLFLOW_PORT:-5000}
state=""
artifacts=""
storage=""
stage=""
venv=""
ray_address=""
ddp_backend=""
workers=1
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
        *) echo "head_services.sh: unknown option '$1'" >&2; usage ;;
    esac
done

# $PYTHON (the rehearsal's .venv/bin/python, ~/venv/bin/python on a cluster) and the mlflow
# beside it, unless $MLFLOW_BIN says otherwise.
python=${PYTHON:-python3}
mlflow_bin=${MLFLOW_BIN:-$(dirname "$(command -v "$python")")/mlflow}
[ -x "$mlflow_bin" ] || mlflow_bin=mlflow

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

case $command in
env)
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
mlflow-start)
    [ -n "$state" ] && [ -n "$artifacts" ] || { echo "mlflow-start needs --state and --artifacts" >&2; exit 2; }
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
    # sqlite on the head's local disk (never on NFS); PostgreSQL for many concurrent trials.
    # setsid: the server gets its own session, so mlflow-stop ends its workers too. Its job
    # runner (GenAI evaluation jobs; the studies start none) would add seven processes.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
        setsid "$mlflow_bin" server \
        --backend-store-uri "sqlite:///$state/mlflow.db" \
        --artifacts-destination "$artifacts" \
        --host "$host" --port "$port" --workers "$workers" \
        > "$state/server.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
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
    echo "MLflow server at $url (pid $(cat "$pidfile"), store $state/mlflow.db, artifacts $artifacts)"
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
