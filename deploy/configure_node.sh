#!/usr/bin/env bash
# Writes this node's w2s-sweep settings; cluster.yaml runs it on every node at `ray up`.
#
#   configure_node.sh STORAGE_ROOT [--mlflow-port PORT]
#
# STORAGE_ROOT (s3://BUCKET/PREFIX or gs://BUCKET/PREFIX) holds the sweeps' results, checkpoints,
# artifact cache and the MLflow artifacts. The file written, ~/.w2s/cluster.env (or
# $W2S_CLUSTER_ENV), is read by run_sweep.py when it is given --address and by start_mlflow.sh.
# Nothing secret goes into it: credentials come from the node's IAM role or service account.
set -euo pipefail

usage() { echo "usage: configure_node.sh s3://BUCKET/PREFIX|gs://BUCKET/PREFIX [--mlflow-port PORT]" >&2; exit 2; }
[ $# -ge 1 ] || usage
root=${1%/}
shift
port=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --mlflow-port) [ $# -ge 2 ] || usage; port=$2; shift 2 ;;
    *) usage ;;
  esac
done

case "$root" in
  *YOUR-BUCKET*)
    echo "configure_node.sh: $root still names the placeholder bucket; set your bucket in the" \
         "configure_node.sh line of cluster.yaml's setup_commands (see docs/cluster.md)" >&2
    exit 2 ;;
  s3://?*|gs://?*) ;;
  *) echo "configure_node.sh: the storage root must be s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (got $root)" >&2
     exit 2 ;;
esac
case "$root" in
  *'?'*|*' '*) echo "configure_node.sh: no query string or spaces in the storage root (got $root)" >&2; exit 2 ;;
esac
case "$port" in
  ''|*[!0-9]*) echo "configure_node.sh: --mlflow-port must be a number (got $port)" >&2; exit 2 ;;
esac

env_file=${W2S_CLUSTER_ENV:-$HOME/.w2s/cluster.env}
mkdir -p "$(dirname "$env_file")"
tmp="$env_file.tmp.$$"
cat > "$tmp" <<ENV
# Written by deploy/configure_node.sh (cluster.yaml setup_commands). Read by run_sweep.py when it
# is given --address (explicit flags win) and by deploy/start_mlflow.sh. Not secret.
W2S_STORAGE_PATH=$root
W2S_MLFLOW_URI=http://127.0.0.1:$port
W2S_MLFLOW_PORT=$port
W2S_MLFLOW_ARTIFACTS=$root/mlflow-artifacts
W2S_MULTI_HOST=1
ENV
mv "$tmp" "$env_file"
echo "w2s-sweep: wrote $env_file (storage $root, MLflow at http://127.0.0.1:$port)"
