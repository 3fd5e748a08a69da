#!/usr/bin/env bash
# Builds Flotilla, starts a local cluster (`flotilla up`: master and node in
# one process), deploys the hello-http app behind a Service and requests it
# once, then runs two sample command pods (hello, which prints and ends,
# and ticker, which runs on). The cluster keeps running afterwards; the
# script prints how to use and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/setup.sh
if [ ! -x "${CARGO_TARGET_DIR:-$root/target}/release/flotilla" ]; then
    echo "== building flotilla (release) and the sample Wasm workloads: the first build compiles wasmtime and takes about 10 minutes on a 2-core machine; later ones take seconds =="
else
    echo "== building flotilla (release) and the sample Wasm workloads =="
fi
cargo build --release -p flotilla -p flotilla-workloads

demo=${FLOTILLA_DEMO_DIR:-$HOME/.flotilla/demo}
listen=${FLOTILLA_LISTEN:-127.0.0.1:7443}
mkdir -p "$demo"
export FLOTILLA_CONFIG="$demo/config"
flotilla="${CARGO_TARGET_DIR:-$root/target}/release/flotilla"

if [ -f "$demo/up.pid" ] && kill -0 "$(cat "$demo/up.pid")" 2>/dev/null; then
    echo "== a demo cluster is already running (pid $(cat "$demo/up.pid")) =="
else
    echo "== starting a local cluster on $listen (logs: $demo/up.log) =="
    nohup "$flotilla" up --data-dir "$demo/data" --listen "$listen" --name local >"$demo/up.log" 2>&1 &
    echo $! >"$demo/up.pid"
fi

wait_until() { # description, command...
    local what=$1; shift
    for _ in $(seq 1 150); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "timed out waiting for $what; see $demo/up.log" >&2
    exit 1
}
node_ready() { "$flotilla" get nodes | grep -q ' Ready '; }
hello_done() { "$flotilla" get pods hello -o json | grep -q '"phase": "Succeeded"'; }
wait_until "the node to be Ready" node_ready
"$flotilla" get nodes -o wide

echo "== deploying hello-http behind a Service (workloads/hello-http/deployment.yaml) =="
"$flotilla" apply -f workloads/hello-http/deployment.yaml
app_ready() { "$flotilla" get endpoints hello | grep -q 'hello-'; }
wait_until "the app's pods to be ready" app_ready
get() { # host port path: one HTTP request, with curl when there is one
    if command -v curl >/dev/null; then
        curl -fsS --max-time 5 "http://$1:$2$3"
    else
        exec 3<>"/dev/tcp/$1/$2" && printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$3" "$1" >&3 &&
            sed '1,/^\r$/d' <&3 && exec 3<&-
    fi
}
serves() { get 127.0.0.1 30080 / | grep -q 'hello from'; }
wait_until "the app to answer on port 30080" serves
"$flotilla" get svc hello
"$flotilla" get endpoints hello
echo "== curl http://127.0.0.1:30080/ =="
get 127.0.0.1 30080 /

echo "== two sample command pods: workloads/hello (prints and ends) and workloads/ticker (ticks on) =="
"$flotilla" apply -f workloads/hello/pod.yaml -f workloads/ticker/pod.yaml
wait_until "hello to finish" hello_done
sleep 2
"$flotilla" get pods -o wide
echo "== flotilla logs hello =="
"$flotilla" logs hello
echo "== flotilla logs ticker --tail 3 =="
"$flotilla" logs ticker --tail 3

cat <<EOT

The cluster keeps running (pid $(cat "$demo/up.pid")). Try:
  curl http://127.0.0.1:30080/            # the app, through the node's proxy
  export FLOTILLA_CONFIG=$FLOTILLA_CONFIG
  $flotilla scale deployment hello --replicas 5
  $flotilla get pods -o wide
  $flotilla logs -f ticker
  $flotilla delete pod ticker
Stop it with: kill $(cat "$demo/up.pid")
EOT
