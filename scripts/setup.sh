#!/usr/bin/env bash
# Installs what natkit needs, then builds the release binary. Idempotent: safe to run again.
# Needs root (or sudo) for apt-get.
#
#   scripts/setup.sh          what running natkit needs (build tools, libvpx/libopus for `call`)
#   scripts/setup.sh --tests  that, plus every real component the test suite starts (coturn, Redis,
#                             browsers, the NAT lab's tools, npm packages), and the test binaries
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tests=0
case "${1:-}" in
  --tests) tests=1 ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--tests]" >&2; exit 2 ;;
esac

# What building and running natkit needs.
RUN_PACKAGES=(
  libvpx-dev libopus-dev pkg-config clang   # VP8 / Opus for `call`
  openssl           # throwaway certificates in scripts/demo.sh
)
# What the tests and benchmarks start or use.
TEST_PACKAGES=(
  coturn            # turnserver, turnutils_*: independent STUN/TURN peer and load client
  redis-server      # multi-node signaling tests
  nftables          # the NAT lab
  conntrack         # the NAT lab: a router that forgets its mappings (conntrack -F)
  iproute2          # ip netns, veth
  iputils-ping
  chromium chromium-driver   # browser interop tests
  firefox-esr       # browser interop tests (its WebDriver, geckodriver, comes from crates.io below)
  iperf3 jq         # bench-punch: anchor and JSON
  linux-perf        # bench-punch: CPU per byte (perf stat task-clock) and PERF_RECORD profiles
  procps psmisc     # ps/pkill used by benches
  stun-client       # Debian's classic RFC 3489 client (stun), tried against natkit relay
  stun-server       # Debian's classic RFC 3489 server (stund): nat-type's CHANGED-ADDRESS path
  miniupnpd-nftables miniupnpc   # nat-type port-mapping lab: UPnP-IGD/NAT-PMP/PCP router, upnpc
  prometheus        # promtool: every /metrics page is checked with `promtool check metrics`
  systemd man-db    # systemd-analyze verify/security on deploy/*.service (it looks up their man: links)
)
PACKAGES=("${RUN_PACKAGES[@]}")
if [ "$tests" = 1 ]; then PACKAGES+=("${TEST_PACKAGES[@]}"); fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ "$tests" = 1 ]; then
# Debian starts coturn, redis and prometheus as services on install; the tests start their own instances.
for svc in coturn redis-server miniupnpd prometheus; do
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done

# geckodriver (Firefox's WebDriver server) is not packaged by Debian: build it from crates.io, once;
# later runs find it and skip this. Pinned for reproducible CI; 0.37.1 drives Debian 12's firefox-esr 153
# (tests/signal_browser.rs). An unoptimised build without debug info takes half the CPU time of a
# release build (about 1.6 against 3 CPU-minutes here) and a WebDriver proxy needs no speed.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v geckodriver >/dev/null 2>&1 && [ ! -x "$cargo_bin/geckodriver" ]; then
  echo "setup: installing geckodriver from crates.io" >&2
  CARGO_PROFILE_DEV_DEBUG=0 cargo install geckodriver --version 0.37.1 --locked --debug
fi

# npm packages for the socket.io interop test and bench-signal, from the committed lock file.
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: npm is missing; install Node.js 18+ (e.g. apt-get install nodejs npm)" >&2
  exit 1
fi
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error >&2
fi

if [ "${NATKIT_SETUP_SKIP_BUILD:-0}" != "1" ]; then
  # --all-targets: the tests' dev-dependencies unify features into shared crates; building them here
  # with the same feature set lets `cargo test --release` reuse every artifact instead of compiling
  # a large part of the tree a second time.
  if [ "$tests" = 1 ]; then
    cargo build --release --locked --all-targets
  else
    cargo build --release --locked --bin natkit
  fi
fi
echo "setup: done; binary at target/release/natkit" >&2
