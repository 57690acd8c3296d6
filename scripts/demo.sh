#!/usr/bin/env bash
# The main job on a fresh machine: start a STUN server on loopback (coturn, as
# installed by setup.sh), probe it with natkit over UDP, TCP and TLS, stop it.
# Against the public internet the same command is simply: natkit stun-probe
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${NATKIT_BIN:-target/release/natkit}"
[ -x "$bin" ] || { echo "demo: $bin not built; run scripts/setup.sh first" >&2; exit 2; }
command -v turnserver >/dev/null || { echo "demo: turnserver missing; run scripts/setup.sh (apt-get install coturn)" >&2; exit 2; }

dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/key.pem" \
  -out "$dir/cert.pem" -days 1 -subj /CN=localhost >/dev/null 2>&1
turnserver -n --no-cli --no-dtls --listening-ip 127.0.0.1 --listening-port 34780 --tls-listening-port 53490 \
  --cert "$dir/cert.pem" --pkey "$dir/key.pem" --pidfile "$dir/pid" --log-file "$dir/log" --userdb "$dir/db" \
  >/dev/null 2>&1 &
pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/53490) 2>/dev/null && break; sleep 0.1; done

echo "\$ natkit stun-probe 127.0.0.1:34780 stun:127.0.0.1:34780?transport=tcp stuns:127.0.0.1:53490 --insecure --count 3" >&2
"$bin" stun-probe 127.0.0.1:34780 'stun:127.0.0.1:34780?transport=tcp' stuns:127.0.0.1:53490 --insecure --count 3
