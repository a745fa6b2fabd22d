#!/usr/bin/env bash
# (Re)starts the MLflow tracking server on the head node; cluster.yaml runs it after `ray start`.
#
# It listens on 127.0.0.1 only, so it is never reachable from the internet or from the other
# nodes (the sweep driver, the only MLflow writer, runs on the head). Browse it through an SSH
# port forward (README, "Running on a cluster").
#   backend store: the URI in <state>/mlflow-backend-uri if that file exists (Postgres, with its
#                  password: the file stays on the head, never in the repository),
#                  else sqlite:///<state>/mlflow.db
#   artifacts:     $W2S_MLFLOW_ARTIFACTS (the cluster's bucket), proxied by this server
# <state> is the directory of the cluster env file (~/.w2s) written by configure_node.sh.
set -euo pipefail

env_file=${W2S_CLUSTER_ENV:-$HOME/.w2s/cluster.env}
if [ ! -f "$env_file" ]; then
  echo "start_mlflow.sh: $env_file is missing; deploy/configure_node.sh writes it" >&2
  exit 2
fi
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
state=$(cd "$(dirname "$env_file")" && pwd)
port=${W2S_MLFLOW_PORT:?W2S_MLFLOW_PORT is not set in $env_file}
artifacts=${W2S_MLFLOW_ARTIFACTS:?W2S_MLFLOW_ARTIFACTS is not set in $env_file}
backend="sqlite:///$state/mlflow.db"
if [ -s "$state/mlflow-backend-uri" ]; then
  backend=$(head -n 1 "$state/mlflow-backend-uri")
fi
pidfile="$state/mlflow.pid"
log="$state/mlflow.log"

# A re-run of `ray up` restarts the server: stop the one this script started (its own process group).
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  kill -- "-$(cat "$pidfile")" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.5; done
fi

setsid nohup mlflow server --host 127.0.0.1 --port "$port" --backend-store-uri "$backend" \
  --artifacts-destination "$artifacts" --workers "${W2S_MLFLOW_WORKERS:-2}" > "$log" 2>&1 < /dev/null &
echo $! > "$pidfile"

for _ in $(seq 1 180); do
  if python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null; then
    echo "w2s-sweep: MLflow at http://127.0.0.1:$port (backend ${backend%%:*}, artifacts $artifacts), log $log"
    exit 0
  fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "start_mlflow.sh: MLflow exited; the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  sleep 1
done
echo "start_mlflow.sh: MLflow did not answer on 127.0.0.1:$port within 180 s; see $log" >&2
exit 1
