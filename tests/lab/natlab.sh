#!/usr/bin/env bash
# natlab.sh: the natkit NAT lab, built from network namespaces, veth pairs and nftables.
#
# Used by the Rust tests (tests/common/lab.rs) and by scripts/bench-*. Everything it makes lives in
# namespaces whose names start with PREFIX-; nothing touches the default namespace's interfaces,
# routes or firewall, and no address leaves the documentation ranges and 10.x.
#
#   natlab.sh public PREFIX IP...                 public segment: namespace PREFIX-pub with a bridge
#                                                 "br" holding the given /24 addresses (203.0.113.x)
#   natlab.sh nat PREFIX NAME INDEX KIND HAIRPIN [UDP_TIMEOUT]
#                                                 a client PREFIX-c-NAME behind a router PREFIX-r-NAME
#                                                 (or directly on the bridge for open/firewall); UDP_TIMEOUT
#                                                 sets the router's conntrack UDP timeouts (mapping lifetime, s)
#   natlab.sh client PREFIX NAME ROUTER INDEX HOST
#                                                 one more client PREFIX-c-NAME at 10.INDEX.0.HOST on the LAN
#                                                 of the existing router PREFIX-r-ROUTER (NAT number INDEX):
#                                                 two or more peers behind one NAT, on one LAN segment
#   natlab.sh forget PREFIX NAME LOW HIGH         router PREFIX-r-NAME "reboots": its masquerade moves to ports
#                                                 LOW-HIGH and conntrack is flushed, so every mapping is gone
#                                                 and new ones get new ports (masquerading kinds only)
#   natlab.sh forget-symmetric PREFIX NAME LOW HIGH
#                                                 like forget, and the router comes back as a symmetric NAT
#                                                 (fully-random masquerade): re-punching toward a port-restricted
#                                                 peer cannot work after it
#   natlab.sh unforget PREFIX NAME KIND           undoes forget/forget-symmetric: router PREFIX-r-NAME masquerades
#                                                 again as `nat` made it for KIND (port-restricted-cone or
#                                                 symmetric) and conntrack is flushed (a bench repeating a row)
#   natlab.sh cut PREFIX NAME                     router PREFIX-r-NAME stops forwarding anything (a dead uplink)
#   natlab.sh shape PREFIX NAME RATE              tbf on router PREFIX-r-NAME's WAN egress (e.g. 40mbit): makes
#                                                 an upload from its client last long enough to break it midway
#   natlab.sh down PREFIX                         deletes every PREFIX-* namespace (and ends what runs in them)
#   natlab.sh miniupnpd PREFIX NAME STUN_IP STUN_PORT
#                                                 runs miniupnpd (UPnP-IGD, NAT-PMP, PCP) on router PREFIX-r-NAME
#                                                 (a NAT kind made by `nat`) in the background until `down`; it
#                                                 learns its external address by STUN from STUN_IP:STUN_PORT.
#                                                 Prints the directory holding its config and log.
#   natlab.sh miniupnpd-rules PREFIX NAME         prints the rules miniupnpd holds on that router (none: nothing)
#   natlab.sh public6 PREFIX IP6...               IPv6 on the public segment: the given addresses (2001:db8::/64)
#                                                 on PREFIX-pub's bridge, which also routes between the v6 LANs
#                                                 (it holds 2001:db8::ff, the routers' v6 default gateway)
#   natlab.sh v6 PREFIX NAME INDEX KIND6          dual stack for client NAME made by `nat` with the same INDEX
#                                                 (run public6 first). KIND6: open | firewall | nat66 (see below)
#
# Addresses for NAT number INDEX (1-89): router WAN 203.0.113.(10+INDEX), LAN 10.INDEX.0.1/24 on the
# router's bridge "lan", first client 10.INDEX.0.2, further clients 10.INDEX.0.3-254; an open client is
# 203.0.113.(100+INDEX). Endpoint-independent filtering (full-cone, restricted-cone: the dnat back to
# the client) and hairpinning lead to the first client only; further clients get the kind's mapping,
# and replies to what they sent.
# KIND: open | firewall | full-cone | restricted-cone | port-restricted-cone | symmetric | udp-blocked
# HAIRPIN: 1 makes the router loop LAN packets sent to its own public address back to the mapped client.
# IPv6 (public6, v6): the public segment is 2001:db8::/64; router INDEX has WAN 2001:db8::1:INDEX and LAN
# 2001:db8:INDEX::/64 (router ::1, clients ::HOST with the v4 host numbers); an open or firewall host
# (no router) gets 2001:db8::c:INDEX on the public segment and the v4 kind's host firewall (an inet table)
# filters both families. KIND6 on a router: open (routes, no filter), firewall (routes; stateful: inbound
# only established/related, as most home routers do for v6), nat66 (masquerade to the WAN address, no route
# to the LAN from outside: port-preserving, address-and-port-dependent filtering). INDEX in a v6 address is
# written as is (decimal digits read as hex), which is unique for 1-89. Every v6 address is added with
# nodad: duplicate address detection would hold it tentative for about 2 s.
set -euo pipefail

die() { echo "natlab: $*" >&2; exit 2; }

cmd=${1:-}; shift || true
case "$cmd" in
public)
  p=${1:?prefix}; shift
  [ $# -ge 1 ] || die "public: give at least one public address"
  ip netns add "$p-pub"
  ip -n "$p-pub" link set lo up
  ip -n "$p-pub" link add name br type bridge
  ip -n "$p-pub" link set dev br up
  for a in "$@"; do ip -n "$p-pub" addr add "$a/24" dev br; done
  ;;

nat)
  p=${1:?prefix}; name=${2:?name}; i=${3:?index}; kind=${4:?kind}; hairpin=${5:-0}; udp_timeout=${6:-}
  [ "$i" -ge 1 ] && [ "$i" -le 89 ] || die "nat index $i out of range 1-89"
  pub="$p-pub"; r="$p-r-$name"; c="$p-c-$name"
  ip netns add "$c"
  ip -n "$c" link set lo up
  case "$kind" in
  open|firewall)
    ip -n "$pub" link add name "v-$name" type veth peer name eth0 netns "$c"
    ip -n "$pub" link set "v-$name" master br up
    ip -n "$c" addr add "203.0.113.$((100 + i))/24" dev eth0
    ip -n "$c" link set eth0 up
    if [ "$kind" = firewall ]; then
      # A stateful firewall on the host itself: public address, but unsolicited inbound UDP is dropped.
      ip netns exec "$c" nft -f - <<EOF
table inet lab {
  chain input_filter {
    type filter hook input priority 0; policy accept;
    iifname "eth0" ct state established,related accept
    iifname "eth0" meta l4proto udp drop
  }
}
EOF
    fi
    exit 0
    ;;
  full-cone|restricted-cone|port-restricted-cone|symmetric|udp-blocked) ;;
  *) die "unknown NAT kind '$kind'" ;;
  esac

  wan="203.0.113.$((10 + i))"; lan="10.$i.0.0/24"; gw="10.$i.0.1"; client="10.$i.0.2"
  ip netns add "$r"
  ip -n "$r" link set lo up
  ip -n "$pub" link add name "v-$name" type veth peer name wan netns "$r"
  ip -n "$pub" link set "v-$name" master br up
  ip -n "$r" addr add "$wan/24" dev wan
  ip -n "$r" link set wan up
  # The LAN is a bridge, so `client` can put more hosts on the same segment behind this router.
  ip -n "$r" link add name lan type bridge
  # A fixed MAC: otherwise the bridge takes its lowest port's, and a later `client` could change it
  # under a running client's ARP cache.
  ip -n "$r" link set lan address "$(printf '02:00:0a:%02x:00:01' "$i")"
  ip -n "$r" addr add "$gw/24" dev lan
  ip -n "$r" link set lan up
  ip -n "$r" link add name "l-$name" type veth peer name eth0 netns "$c"
  ip -n "$r" link set "l-$name" master lan up
  ip -n "$c" addr add "$client/24" dev eth0
  ip -n "$c" link set eth0 up
  ip -n "$c" route add default via "$gw"
  ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$r" sysctl -qw net.ipv4.conf.all.send_redirects=0
  ip netns exec "$r" sysctl -qw net.ipv4.conf.lan.send_redirects=0
  # Frames switched on the LAN bridge stay out of the router's nftables, like in a home router's
  # switch: with br_netfilter loaded on the machine (its sysctls are per namespace, on by default),
  # the hairpin dnat would be done at the bridge and the packet never sent back out its own port.
  if [ -d /proc/sys/net/bridge ]; then
    for t in iptables ip6tables arptables; do ip netns exec "$r" sysctl -qw "net.bridge.bridge-nf-call-$t=0"; done
  fi

  # Hairpinning: a LAN packet to our own public address goes back to the client (ports are preserved
  # by every hairpin-capable kind here), with its source rewritten to the public address so the
  # receiver sees the sender's mapped address.
  hp_pre=""; hp_post=""
  if [ "$hairpin" = 1 ]; then
    [ "$kind" != symmetric ] || die "hairpinning is only built for port-preserving kinds, not symmetric"
    hp_pre="iifname \"lan\" ip daddr $wan meta l4proto udp dnat to $client"
    hp_post="oifname \"lan\" ip saddr $lan ip daddr $client snat to $wan"
  fi

  # Unsolicited inbound packets are dropped in the input chain, before conntrack confirms an entry
  # for them: otherwise masquerade later gives that remote a fresh port (see LAB-NOTES).
  drop_new_in='iifname "wan" ct state new drop'
  case "$kind" in
  full-cone)
    # snat keeps the client's port (endpoint-independent mapping); the dnat of every port back to the
    # client lets anyone reach a mapped port (endpoint-independent filtering).
    nat_pre="iifname \"wan\" ip daddr $wan udp dport 1024-65535 dnat to $client"
    nat_post="oifname \"wan\" ip saddr $lan snat to $wan"
    filter=""
    ;;
  restricted-cone)
    # Same mapping as full cone; inbound passes only from an address this client endpoint has sent to
    # (address-dependent filtering), remembered in a dynamic set keyed by (client ip, port, remote ip).
    nat_pre="iifname \"wan\" ip daddr $wan udp dport 1024-65535 dnat to $client"
    nat_post="oifname \"wan\" ip saddr $lan snat to $wan"
    filter="
  set contacted {
    type ipv4_addr . inet_service . ipv4_addr
    flags dynamic,timeout
    timeout 5m
  }
  chain forward_filter {
    type filter hook forward priority 0; policy accept;
    iifname \"lan\" oifname \"wan\" meta l4proto udp update @contacted { ip saddr . udp sport . ip daddr }
    iifname \"wan\" ct state established,related accept
    iifname \"wan\" meta l4proto udp ip daddr . udp dport . ip saddr @contacted accept
    iifname \"wan\" drop
  }"
    ;;
  port-restricted-cone)
    # Plain masquerade: port kept, inbound only from the exact remote endpoint (conntrack).
    nat_pre=""
    nat_post="oifname \"wan\" masquerade"
    filter="
  chain input_filter { type filter hook input priority 0; policy accept; $drop_new_in; }"
    ;;
  symmetric)
    # A fresh random port per remote endpoint.
    nat_pre=""
    nat_post="oifname \"wan\" masquerade fully-random"
    filter="
  chain input_filter { type filter hook input priority 0; policy accept; $drop_new_in; }"
    ;;
  udp-blocked)
    nat_pre=""
    nat_post="oifname \"wan\" masquerade"
    filter="
  chain forward_filter { type filter hook forward priority 0; policy accept; meta l4proto udp drop; }
  chain input_filter { type filter hook input priority 0; policy accept; meta l4proto udp drop; $drop_new_in; }"
    ;;
  esac

  ip netns exec "$r" nft -f - <<EOF
table ip lab {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    $hp_pre
    $nat_pre
  }
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    $hp_post
    $nat_post
  }
  $filter
}
EOF
  if [ -n "$udp_timeout" ]; then
    # Per-namespace conntrack timeouts: how long an idle mapping lives on this router.
    ip netns exec "$r" sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$udp_timeout"
    ip netns exec "$r" sysctl -qw net.netfilter.nf_conntrack_udp_timeout_stream="$udp_timeout"
  fi
  ;;

client)
  p=${1:?prefix}; name=${2:?name}; router=${3:?router name}; i=${4:?index}; host=${5:?host number}
  [ "$host" -ge 3 ] && [ "$host" -le 254 ] || die "client host number $host out of range 3-254"
  r="$p-r-$router"; c="$p-c-$name"
  ip netns list | awk '{print $1}' | grep -qx "$r" || die "client $name: no router namespace $r (open and firewall hosts have none)"
  ip netns add "$c"
  ip -n "$c" link set lo up
  ip -n "$r" link add name "l-$name" type veth peer name eth0 netns "$c"
  ip -n "$r" link set "l-$name" master lan up
  ip -n "$c" addr add "10.$i.0.$host/24" dev eth0
  ip -n "$c" link set eth0 up
  ip -n "$c" route add default via "10.$i.0.1"
  ;;

forget)
  p=${1:?prefix}; name=${2:?name}; low=${3:?low port}; high=${4:?high port}; r="$p-r-$name"
  command -v conntrack >/dev/null || die "forget: conntrack is missing (apt-get install conntrack)"
  # The kind decides the new rule: symmetric stays fully random, port-restricted stays plain.
  post=$(ip netns exec "$r" nft list chain ip lab post)
  case "$post" in *masquerade*) ;; *) die "forget: router $name does not masquerade" ;; esac
  random=""
  case "$post" in *fully-random*) random=" fully-random" ;; esac
  ip netns exec "$r" nft flush chain ip lab post
  ip netns exec "$r" nft add rule ip lab post oifname "wan" meta l4proto udp masquerade to :"$low-$high"$random
  ip netns exec "$r" nft add rule ip lab post oifname "wan" masquerade$random
  ip netns exec "$r" conntrack -F >/dev/null 2>&1 || die "forget: conntrack -F failed in $r"
  ;;

forget-symmetric)
  p=${1:?prefix}; name=${2:?name}; low=${3:?low port}; high=${4:?high port}; r="$p-r-$name"
  command -v conntrack >/dev/null || die "forget-symmetric: conntrack is missing (apt-get install conntrack)"
  post=$(ip netns exec "$r" nft list chain ip lab post)
  case "$post" in *masquerade*) ;; *) die "forget-symmetric: router $name does not masquerade" ;; esac
  ip netns exec "$r" nft flush chain ip lab post
  ip netns exec "$r" nft add rule ip lab post oifname "wan" meta l4proto udp masquerade to :"$low-$high" fully-random
  ip netns exec "$r" nft add rule ip lab post oifname "wan" masquerade fully-random
  ip netns exec "$r" conntrack -F >/dev/null 2>&1 || die "forget-symmetric: conntrack -F failed in $r"
  ;;

unforget)
  p=${1:?prefix}; name=${2:?name}; kind=${3:?kind}; r="$p-r-$name"
  command -v conntrack >/dev/null || die "unforget: conntrack is missing (apt-get install conntrack)"
  case "$kind" in
  port-restricted-cone) rule="masquerade" ;;
  symmetric) rule="masquerade fully-random" ;;
  *) die "unforget: $kind is not a masquerading kind" ;;
  esac
  ip netns exec "$r" nft flush chain ip lab post
  ip netns exec "$r" nft add rule ip lab post oifname "wan" $rule
  ip netns exec "$r" conntrack -F >/dev/null 2>&1 || die "unforget: conntrack -F failed in $r"
  ;;

cut)
  p=${1:?prefix}; name=${2:?name}
  ip netns exec "$p-r-$name" nft add table ip cut
  ip netns exec "$p-r-$name" nft add chain ip cut forward_cut '{ type filter hook forward priority -10; policy drop; }'
  ;;

shape)
  p=${1:?prefix}; name=${2:?name}; rate=${3:?rate}
  ip netns exec "$p-r-$name" tc qdisc replace dev wan root tbf rate "$rate" burst 64kb latency 400ms
  ;;

down)
  p=${1:?prefix}
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$p-" || true); do
    # Whatever still runs in a lab namespace was started by the lab's user; end it by pid.
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  ;;

miniupnpd)
  # A port-mapping router (LAB-NOTES: miniupnpd). Its nftables chains live in `table inet filter`
  # (names compiled into Debian's 2.3.1); Debian's nft_init.sh sources a file the package lacks,
  # so the table is made here. The WAN address is a documentation one, which miniupnpd refuses as
  # "reserved" unless it learns it by STUN; its STUN test also checks that the changed-address
  # answers get in, so the router's input chain accepts UDP from the STUN server's ports.
  p=${1:?prefix}; name=${2:?name}; stun_ip=${3:?stun ip}; stun_port=${4:?stun port}
  r="$p-r-$name"
  ip netns list | awk '{print $1}' | grep -qx "$r" || die "miniupnpd: no router namespace $r"
  idx=$(ip -n "$r" -4 -o addr show dev lan | sed -E 's/.* 10\.([0-9]+)\.0\.1\/.*/\1/')
  # The router's own packets keep their address and port, as on a real router: otherwise a
  # fully-random masquerade makes miniupnpd's STUN test see a symmetric NAT, and it refuses to map.
  wan_ip=$(ip -n "$r" -4 -o addr show dev wan | awk '{print $4}' | cut -d/ -f1)
  ip netns exec "$r" nft insert rule ip lab post oifname wan ip saddr "$wan_ip" accept
  if ip netns exec "$r" nft list chain ip lab input_filter >/dev/null 2>&1; then
    ip netns exec "$r" nft insert rule ip lab input_filter iifname wan ip saddr "$stun_ip/24" udp sport '{ 3478, 3479 }' accept
  fi
  ip netns exec "$r" nft -f - <<EOF
table inet filter {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
EOF
  dir=$(mktemp -d "/tmp/natlab-$r.XXXXXX")
  cat > "$dir/miniupnpd.conf" <<EOF
ext_ifname=wan
listening_ip=lan
http_port=5000
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=yes
ext_perform_stun=yes
ext_stun_host=$stun_ip
ext_stun_port=$stun_port
uuid=3e5a7b1c-0000-4000-8000-0000000000$(printf '%02x' "$idx")
allow 1024-65535 10.$idx.0.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOF
  ip netns exec "$r" setsid miniupnpd -f "$dir/miniupnpd.conf" -P "$dir/miniupnpd.pid" -d >"$dir/log" 2>&1 </dev/null &
  # Ready when NAT-PMP/PCP and the HTTP port listen (after its STUN test), bounded at 20 s.
  for _ in $(seq 100); do
    if ip netns exec "$r" ss -Hlun | grep -q "10.$idx.0.1:5351" && ip netns exec "$r" ss -Hltn | grep -q ':5000'; then
      echo "$dir"; exit 0
    fi
    sleep 0.2
  done
  echo "natlab: miniupnpd did not come up on $r; its log:" >&2; cat "$dir/log" >&2; exit 2
  ;;

miniupnpd-rules)
  p=${1:?prefix}; name=${2:?name}
  for c in miniupnpd prerouting_miniupnpd postrouting_miniupnpd; do
    ip netns exec "$p-r-$name" nft list chain inet filter "$c" | grep -vE '^\s*(table|chain|\}|$)' || true
  done
  ;;

public6)
  p=${1:?prefix}; shift
  [ $# -ge 1 ] || die "public6: give at least one public IPv6 address"
  pub="$p-pub"
  ip netns exec "$pub" sysctl -qw net.ipv6.conf.all.forwarding=1
  # The ISP side of the v6 lab: routers default to this address and it routes between their LANs.
  ip -n "$pub" -6 addr add 2001:db8::ff/64 dev br nodad
  for a in "$@"; do ip -n "$pub" -6 addr add "$a/64" dev br nodad; done
  ;;

v6)
  p=${1:?prefix}; name=${2:?name}; i=${3:?index}; kind6=${4:?kind6}
  [ "$i" -ge 1 ] && [ "$i" -le 89 ] || die "v6 index $i out of range 1-89"
  pub="$p-pub"; r="$p-r-$name"; c="$p-c-$name"
  # Listings are read whole before grep -q: an early exit would SIGPIPE the lister under pipefail.
  pub6=$(ip -n "$pub" -6 addr show dev br)
  grep -q '2001:db8::ff/' <<<"$pub6" || die "v6: run public6 first"
  spaces=$(ip netns list | awk '{print $1}')
  grep -qx "$c" <<<"$spaces" || die "v6: no client namespace $c (run nat first)"
  if ! grep -qx "$r" <<<"$spaces"; then
    # An open or firewall host on the public segment: its v4 kind's inet table filters v6 too.
    case "$kind6" in open|firewall) ;; *) die "v6: a host without a router takes open or firewall, not $kind6" ;; esac
    ip -n "$c" -6 addr add "2001:db8::c:$i/64" dev eth0 nodad
    ip -n "$c" -6 route add default via 2001:db8::ff
    r="$c"; kind6=routerless
  else
    case "$kind6" in open|firewall|nat66) ;; *) die "unknown v6 kind '$kind6'" ;; esac
    ip -n "$r" -6 addr add "2001:db8::1:$i/64" dev wan nodad
    ip -n "$r" -6 addr add "2001:db8:$i::1/64" dev lan nodad
    ip -n "$r" -6 route add default via 2001:db8::ff
    ip netns exec "$r" sysctl -qw net.ipv6.conf.all.forwarding=1
    # Every client on this router's LAN (the first and those added with `client`) gets ::HOST.
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^$p-c-" || true); do
      host=$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | sed -nE "s/.* 10\.$i\.0\.([0-9]+)\/.*/\1/p")
      [ -n "$host" ] || continue
      ip -n "$ns" -6 addr add "2001:db8:$i::$host/64" dev eth0 nodad
      ip -n "$ns" -6 route add default via "2001:db8:$i::1"
    done
    if [ "$kind6" != nat66 ]; then
      ip -n "$pub" -6 route add "2001:db8:$i::/64" via "2001:db8::1:$i"
    fi
    case "$kind6" in
    open) ;;
    firewall)
      ip netns exec "$r" nft -f - <<EOF
table ip6 lab6 {
  chain forward_filter {
    type filter hook forward priority 0; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" meta l4proto ipv6-icmp accept
    iifname "wan" drop
  }
}
EOF
      ;;
    nat66)
      # Unsolicited inbound UDP is dropped at input, before conntrack confirms it (see LAB-NOTES).
      ip netns exec "$r" nft -f - <<EOF
table ip6 lab6 {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" ip6 saddr 2001:db8:$i::/64 masquerade
  }
  chain input_filter {
    type filter hook input priority 0; policy accept;
    iifname "wan" meta l4proto udp ct state new drop
  }
  chain forward_filter {
    type filter hook forward priority 0; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" meta l4proto ipv6-icmp accept
    iifname "wan" drop
  }
}
EOF
      ;;
    esac
  fi
  # Ready when no address of the path is tentative: while a link-local address is in DAD (about
  # 2 s after its link came up), neighbour solicitations go unanswered and the first packets are
  # lost. Bounded at 5 s.
  for _ in $(seq 50); do
    left=""
    for ns in "$pub" "$r" $(ip netns list | awk '{print $1}' | grep -E "^$p-c-" || true); do
      left+=$(ip -n "$ns" -6 addr show tentative 2>/dev/null)
    done
    [ -z "$left" ] && break
    sleep 0.1
  done
  ;;

*)
  die "usage: natlab.sh public PREFIX IP... | nat PREFIX NAME INDEX KIND HAIRPIN [UDP_TIMEOUT] | client PREFIX NAME ROUTER INDEX HOST | forget PREFIX NAME LOW HIGH | cut PREFIX NAME | shape PREFIX NAME RATE | miniupnpd PREFIX NAME STUN_IP STUN_PORT | miniupnpd-rules PREFIX NAME | public6 PREFIX IP6... | v6 PREFIX NAME INDEX KIND6 | down PREFIX"
  ;;
esac
