#!/usr/bin/env bash
# The local rehearsal of cluster.yaml (`make cluster-up` / `make cluster-down`):
#
#   cluster/rehearsal.sh up       Ray head (fake multi-node provider, cluster/rehearsal.yaml:
#                                 TRAIN_DRIVER, no GPU; GPU workers autoscale from 0), and
#                                 PostgreSQL plus the MLflow server on it, both from
#                                 cluster/head_services.sh on 127.0.0.1 (as cluster.yaml's head)
#   cluster/rehearsal.sh status   `ray status` of the rehearsal cluster
#   cluster/rehearsal.sh down     stop what `up` started (by the ids it recorded); safe twice
#
# Settings (environment): RAY_PORT (6379), MLFLOW_PORT (5000), PG_PORT (54320),
# RAY_DASHBOARD_PORT (8265), RAY_INCLUDE_DASHBOARD (true; false saves the head's dashboard
# processes, ≈ 0.35 GB), RAY_CLIENT_PORT (10001), RAY_DASHBOARD_AGENT_PORT (52365),
# USLEARN_CLUSTER_STATE (runs/cluster: pids, logs, the MLflow store and artifacts, staged
# datasets), USLEARN_REHEARSAL_CONFIG (cluster/rehearsal.yaml), RAY_TEMP_DIR (Ray's session files; default Ray's own, so that `--address auto`
# finds the cluster), PYTHON (.venv/bin/python).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
python=${PYTHON:-$root/.venv/bin/python}
bin=$(dirname "$python")
ray_port=${RAY_PORT:-6379}
mlflow_port=${MLFLOW_PORT:-5000}
pg_port=${PG_PORT:-54320}
state=${USLEARN_CLUSTER_STATE:-$root/runs/cluster}
mkdir -p "$state"
state=$(cd "$state" && pwd)
export PYTHON=$python

session_pids() { ps -eo pid=,sid= | awk -v sid="$1" '$2 == sid {print $1}'; }
ray_running() { [ -f "$state/ray.sid" ] && [ -n "$(session_pids "$(cat "$state/ray.sid")")" ]; }

# Stop every process of session $1 (SIGTERM, then SIGKILL after $2 seconds).
stop_session() {
    local sid=$1 wait_s=$2 pids
    pids=$(session_pids "$sid")
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 "$wait_s"); do
        [ -z "$(session_pids "$sid")" ] && return 0
        sleep 1
    done
    pids=$(session_pids "$sid")
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
}

up() {
    # Ray resolves 127.0.0.1 to this machine's address; every node and client must use that one.
    node_ip=$("$python" -c "import ray.util; print(ray.util.get_node_ip_address())")
    # A fake GPU has no CUDA, so the trials' process groups use gloo, not NCCL.
    "$here/head_services.sh" env --host 127.0.0.1 --port "$mlflow_port" --storage "$root" \
        --stage "$state/stage" --ray-address "$node_ip:$ray_port" --ddp-backend gloo \
        > "$state/env.sh"
    if ray_running; then
        echo "Ray rehearsal cluster already running (session $(cat "$state/ray.sid"))"
    else
        # The autoscaling config with this head's GCS address, and the head's resources read
        # from the same file (so the two cannot disagree).
        head_flags=$("$python" - "${USLEARN_REHEARSAL_CONFIG:-$here/rehearsal.yaml}" "$state/autoscaling.yaml" "$node_ip:$ray_port" <<'EOF'
import json, sys
import yaml
config = yaml.safe_load(open(sys.argv[1]))
config["provider"]["gcs_address"] = sys.argv[3]
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
head = dict(config["available_node_types"][config["head_node_type"]]["resources"])
cpus, gpus = head.pop("CPU", 0), head.pop("GPU", 0)
print(f"--num-cpus={cpus} --num-gpus={gpus} --resources={json.dumps(head, separators=(',', ':'))}")
EOF
)
        # Ray 2.60 turns token authentication on when ~/.ray/auth_token exists (or
        # RAY_AUTH_MODE=token); `ray status` needs the mode said explicitly, so record it.
        auth=${RAY_AUTH_MODE:-}
        [ -z "$auth" ] && { [ -f "$HOME/.ray/auth_token" ] && auth=token || auth=disabled; }
        echo "$auth" > "$state/ray.auth"
        temp_flag=()
        [ -n "${RAY_TEMP_DIR:-}" ] && temp_flag=(--temp-dir "$RAY_TEMP_DIR")
        # The nodes inherit this environment (the fake provider starts them from the head's
        # autoscaler), as cluster.yaml's nodes source the same exports.
        (
            set -a
            # shellcheck disable=SC1091
            . "$state/env.sh"
            set +a
            unset RAY_ADDRESS
            # The autoscaler imports the rehearsal's node provider from this folder.
            export PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH}
            RAY_AUTH_MODE=$auth RAY_FAKE_CLUSTER=1 exec setsid "$bin/ray" start --head --block \
                --port "$ray_port" \
                --autoscaling-config "$state/autoscaling.yaml" \
                $head_flags \
                --object-store-memory 300000000 \
                --include-dashboard "${RAY_INCLUDE_DASHBOARD:-true}" \
                --dashboard-host 127.0.0.1 \
                --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" \
                --ray-client-server-port "${RAY_CLIENT_PORT:-10001}" \
                --dashboard-agent-listen-port "${RAY_DASHBOARD_AGENT_PORT:-52365}" \
                --disable-usage-stats \
                "${temp_flag[@]}" \
                > "$state/ray.log" 2>&1 < /dev/null
        ) &
        echo $! > "$state/ray.sid"
        deadline=$((SECONDS + ${RAY_START_TIMEOUT:-120}))
        until grep -q "Ray runtime started" "$state/ray.log" 2>/dev/null; do
            if ! ray_running || [ $SECONDS -ge $deadline ]; then
                echo "rehearsal.sh: the Ray head did not start; the end of $state/ray.log:" >&2
                tail -n 20 "$state/ray.log" >&2
                down
                exit 1
            fi
            sleep 1
        done
        address_file=${RAY_TEMP_DIR:-/tmp/ray}/ray_current_cluster
        [ -f "$address_file" ] && cp "$address_file" "$state/ray.address"
        echo "Ray head up at $node_ip:$ray_port (session $(cat "$state/ray.sid")); GPU workers start on demand"
    fi
    # The tracking store as on a cluster's head: PostgreSQL (sqlite serialises concurrent
    # trials' writes), sized for the trials the rehearsal runs at once.
    if ! "$here/head_services.sh" pg-start --state "$state/mlflow" --port "$pg_port" ||
        ! "$here/head_services.sh" mlflow-start --host 127.0.0.1 --port "$mlflow_port" \
            --state "$state/mlflow" --artifacts "$state/mlartifacts" --backend postgresql; then
        down
        exit 1
    fi
    cat <<EOF

Rehearsal cluster ready. From this directory:
  .venv/bin/python studies/lambda_sensitivity.py --address auto --mlflow http://127.0.0.1:$mlflow_port --profile cpu-demo --workers-per-trial 2 --num-gpus-per-trial 2 --placement STRICT_SPREAD --seeds 1 --set epochs=1
  make cluster-status      # ray status: nodes and resources
  MLflow UI: http://127.0.0.1:$mlflow_port (each study prints the link to its runs table)
  exports for your shell: . $state/env.sh
  stop everything: make cluster-down
EOF
}

down() {
    "$here/head_services.sh" mlflow-stop --state "$state/mlflow"
    "$here/head_services.sh" pg-stop --state "$state/mlflow"
    if [ -f "$state/ray.sid" ]; then
        sid=$(cat "$state/ray.sid")
        stop_session "$sid" 15
        rm -f "$state/ray.sid"
        echo "Ray rehearsal cluster stopped (session $sid)"
    else
        echo "Ray rehearsal cluster: not running (no $state/ray.sid)"
    fi
    # `--address auto` would otherwise point at the stopped head.
    address_file=${RAY_TEMP_DIR:-/tmp/ray}/ray_current_cluster
    if [ -f "$state/ray.address" ] && [ -f "$address_file" ] &&
        [ "$(cat "$state/ray.address")" = "$(cat "$address_file")" ]; then
        rm -f "$address_file"
    fi
    rm -f "$state/ray.address" "$state/ray.auth"
}

case ${1:-} in
up) up ;;
down) down ;;
status)
    ray_running || { echo "Ray rehearsal cluster: not running"; exit 1; }
    node_ip=$("$python" -c "import ray.util; print(ray.util.get_node_ip_address())")
    RAY_AUTH_MODE=$(cat "$state/ray.auth" 2>/dev/null || echo "${RAY_AUTH_MODE:-disabled}") \
        "$bin/ray" status --address "$node_ip:$ray_port"
    ;;
*) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
