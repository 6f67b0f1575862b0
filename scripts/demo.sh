#!/usr/bin/env bash
# The main job, offline on a fresh machine: export the shipped LeNet-5 into ./model_repository,
# serve it over gRPC, classify the shipped MNIST digits, stop the server cleanly, then run a small
# Zeiler-Fergus maximal-activation job over the same digits and print where its gallery is.
#
# Settings (environment variables, or `make demo NAME=VALUE`):
#   GRPC_PORT     the server's gRPC port on 127.0.0.1                      8001
#   METRICS_PORT  its Prometheus /metrics port (-1: none)                  8002
#   REPOSITORY    the model repository the shipped LeNet-5 is exported to  model_repository
#   JOB           the interpretability job file                            examples/jobs/lenet5-digits.toml
#   OUT           the job's output folder                                  the job file's (out/lenet5-digits)
# The demo talks gRPC only, so the server's REST port stays closed (nothing binds 8000).
set -euo pipefail
cd "$(dirname "$0")/.."

REPOSITORY=${REPOSITORY:-model_repository}
GRPC_PORT=${GRPC_PORT:-8001}
METRICS_PORT=${METRICS_PORT:-8002}
JOB=${JOB:-examples/jobs/lenet5-digits.toml}
OUT=${OUT:-}

# The client must know where to connect: a real port (not 0, "any free port").
if ! [[ $GRPC_PORT =~ ^[0-9]+$ ]] || ((GRPC_PORT < 1 || GRPC_PORT > 65535)); then
  echo "demo: GRPC_PORT must be a port number from 1 to 65535, got '$GRPC_PORT'" >&2
  exit 2
fi

# A taken port is said before any work (the server would only find out after the export).
ports=("$GRPC_PORT")
[ "$METRICS_PORT" = "-1" ] || ports+=("$METRICS_PORT")
for port in "${ports[@]}"; do
  if ! python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null; then
    echo "demo: cannot listen on 127.0.0.1:$port (is the port in use?); pick others:" \
      "make demo GRPC_PORT=9001 METRICS_PORT=9002" >&2
    exit 1
  fi
done

echo "== 1. export lenet5-mnist into $REPOSITORY/ (a new version only if the weights changed)"
cnnzoo export lenet5-mnist --repository "$REPOSITORY" --skip-unchanged

metrics="metrics on :$METRICS_PORT"
[ "$METRICS_PORT" = "-1" ] && metrics="no metrics port"
echo "== 2. serve it on 127.0.0.1:$GRPC_PORT ($metrics)"
cnnzoo serve --repository "$REPOSITORY" --model lenet5-mnist \
  --port "$GRPC_PORT" --http-port -1 --metrics-port "$METRICS_PORT" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if cnnzoo health --server "127.0.0.1:$GRPC_PORT" >/dev/null 2>&1; then break; fi
  if ! kill -0 $server 2>/dev/null; then
    echo "demo: the server exited early (see its error above); when a port is taken, pick others:" \
      "make demo GRPC_PORT=9001 METRICS_PORT=9002" >&2
    exit 1
  fi
  sleep 0.5
done
cnnzoo health --server "127.0.0.1:$GRPC_PORT"

echo "== 3. classify the shipped digits over gRPC"
cnnzoo classify examples/digits/*/*.png --model lenet5-mnist --server "127.0.0.1:$GRPC_PORT" --top-k 3

echo "== 4. stop the server (SIGTERM: drain, then exit 0)"
kill -TERM $server
wait $server
trap - EXIT

echo "== 5. a Zeiler-Fergus maximal-activation job over the same digits"
# --overwrite: results of an older version of the job or of the weights are replaced, not mixed
cnnzoo job "$JOB" --overwrite ${OUT:+--out "$OUT"}
