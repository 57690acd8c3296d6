#!/usr/bin/env bash
# The main job on a fresh machine, with nothing but natkit: start natkit's own STUN/TURN relay on
# loopback (UDP, TCP and TLS with a throwaway certificate), probe it over all three transports, prove
# it relays end to end with turn-alloc, stop it.
# Against the public internet the first command is simply: natkit stun-probe
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${NATKIT_BIN:-target/release/natkit}"
[ -x "$bin" ] || { echo "demo: $bin not built; run scripts/setup.sh first" >&2; exit 2; }

dir=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && { kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; rm -rf "$dir"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/key.pem" \
  -out "$dir/cert.pem" -days 1 -subj /CN=localhost >/dev/null 2>&1
"$bin" relay --listen 127.0.0.1:34780 --tls-listen 127.0.0.1:53490 --cert "$dir/cert.pem" --key "$dir/key.pem" \
  --user demo:demo-secret --realm demo -q >"$dir/relay.out" 2>"$dir/relay.err" &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/53490) 2>/dev/null && break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null || { echo "demo: natkit relay did not start:" >&2; cat "$dir/relay.err" >&2; exit 1; }

echo "\$ natkit stun-probe 127.0.0.1:34780 stun:127.0.0.1:34780?transport=tcp stuns:127.0.0.1:53490 --insecure --count 3" >&2
"$bin" stun-probe 127.0.0.1:34780 'stun:127.0.0.1:34780?transport=tcp' stuns:127.0.0.1:53490 --insecure --count 3
echo >&2
echo "\$ natkit turn-alloc 127.0.0.1:34780 --user demo --password demo-secret" >&2
"$bin" turn-alloc 127.0.0.1:34780 --user demo --password demo-secret
