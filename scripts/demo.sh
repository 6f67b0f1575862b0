#!/usr/bin/env bash
# The main job, offline on a fresh machine: export the shipped LeNet-5 into ./model_repository,
# serve it over gRPC, classify the shipped MNIST digits, stop the server cleanly, then run a small
# Zeiler-Fergus maximal-activation job over the same digits and print where its gallery is.
set -euo pipefail
cd "$(dirname "$0")/.."

REPOSITORY=${REPOSITORY:-model_repository}
PORT=${PORT:-8001}
METRICS_PORT=${METRICS_PORT:-8002}
JOB=${JOB:-examples/jobs/lenet5-digits.toml}

echo "== 1. export lenet5-mnist into $REPOSITORY/ (a new version only if the weights changed)"
cnnzoo export lenet5-mnist --repository "$REPOSITORY" --skip-unchanged

echo "== 2. serve it on 127.0.0.1:$PORT (metrics on :$METRICS_PORT)"
cnnzoo serve --repository "$REPOSITORY" --model lenet5-mnist --port "$PORT" --metrics-port "$METRICS_PORT" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if cnnzoo health --server "127.0.0.1:$PORT" >/dev/null 2>&1; then break; fi
  if ! kill -0 $server 2>/dev/null; then echo "server exited early" >&2; exit 1; fi
  sleep 0.5
done
cnnzoo health --server "127.0.0.1:$PORT"

echo "== 3. classify the shipped digits over gRPC"
cnnzoo classify examples/digits/*/*.png --model lenet5-mnist --server "127.0.0.1:$PORT" --top-k 3

echo "== 4. stop the server (SIGTERM: drain, then exit 0)"
kill -TERM $server
wait $server
trap - EXIT

echo "== 5. a Zeiler-Fergus maximal-activation job over the same digits"
# --overwrite: results of an older version of the job or of the weights are replaced, not mixed
cnnzoo job "$JOB" --overwrite
