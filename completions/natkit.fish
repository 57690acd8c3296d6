# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_natkit_global_optspecs
    string join \n json v/verbose q/quiet wide h/help V/version
end

function __fish_natkit_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_natkit_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_natkit_using_subcommand
    set -l cmd (__fish_natkit_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c natkit -n "__fish_natkit_needs_command" -l json -d 'Print the report as JSON on stdout (field names are a stable contract)'
complete -c natkit -n "__fish_natkit_needs_command" -s v -l verbose -d 'More logging on stderr (-v info, -vv debug, -vvv trace)'
complete -c natkit -n "__fish_natkit_needs_command" -s q -l quiet -d 'No progress and no warnings on stderr; only the result on stdout'
complete -c natkit -n "__fish_natkit_needs_command" -l wide -d 'Tables with every column (default: the columns that fit a terminal; --json has all)'
complete -c natkit -n "__fish_natkit_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c natkit -n "__fish_natkit_needs_command" -s V -l version -d 'Print version'
complete -c natkit -n "__fish_natkit_needs_command" -f -a "stun-probe" -d 'STUN Binding to many servers at once (UDP, TCP, TLS; IPv4/IPv6)'
complete -c natkit -n "__fish_natkit_needs_command" -f -a "nat-type" -d 'NAT behaviour discovery (RFC 5780): mapping, filtering, hairpinning, and what it means for P2P'
complete -c natkit -n "__fish_natkit_needs_command" -f -a "relay" -d 'STUN/TURN relay with an RFC 5780 responder, safe by default'
complete -c natkit -n "__fish_natkit_needs_command" -f -a "turn-alloc" -d 'Prove a TURN server relays, step by step, and audit its safety'
complete -c natkit -n "__fish_natkit_needs_command" -f -a "signal" -d 'Rendezvous and signaling server with the browser video-chat page'
complete -c natkit -n "__fish_natkit_needs_command" -f -a "punch" -d 'UDP hole punching to a peer through `natkit signal`, then an encrypted QUIC stream'
complete -c natkit -n "__fish_natkit_needs_command" -f -a "call" -d 'A WebRTC media session from the terminal that a browser can talk to'
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -l transport -d 'Transport to probe over' -r -f -a "udp\t''
tcp\t''
tls\t''
all\t'UDP, TCP and TLS to every server'"
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -l count -d 'Binding requests per server (RTT min/avg/max and loss)' -r
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -l interval -d 'Milliseconds between repeated requests with --count' -r
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -l local -d 'Local address to bind: IP or IP:PORT' -r
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -l timeout -d 'Give up on a server after this many seconds without an answer' -r
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -l ca -d 'Trust this PEM CA certificate for TLS (a private CA)' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -s 4 -l ipv4 -d 'Use IPv4 addresses only'
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -s 6 -l ipv6 -d 'Use IPv6 addresses only'
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -l insecure -d 'Accept any TLS certificate (self-signed, expired, wrong name); the report says so'
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -l json -d 'Print the report as JSON on stdout (field names are a stable contract)'
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -s v -l verbose -d 'More logging on stderr (-v info, -vv debug, -vvv trace)'
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -s q -l quiet -d 'No progress and no warnings on stderr; only the result on stdout'
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -l wide -d 'Tables with every column (default: the columns that fit a terminal; --json has all)'
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c natkit -n "__fish_natkit_using_subcommand stun-probe" -s V -l version -d 'Print version'
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -l server -d 'STUN server: HOST, HOST:PORT or a stun: URI; repeat for more. The first is the primary and should support RFC 5780 (OTHER-ADDRESS, CHANGE-REQUEST); with servers that do not, give two or more and the mapping is found by comparing them. Without any, a built-in list (see README)' -r
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -l ports -d 'Open N fresh sockets and report the pattern of their mapped ports (preserving, sequential, random)' -r
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -l local -d 'Local address for the primary socket: IP or IP:PORT' -r
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -l timeout -d 'Give up on a server that never answers after this many seconds (the udp-blocked verdict) [default: 1]. With --lifetime: the bound on the whole run [default: 180], and the wait for a silent server is at most 1 s' -r
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -l every -d 'Run again every SECS seconds until Ctrl-C, printing one line per run with what changed (public address, verdicts, port mapping); JSON Lines with --json' -r
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -l lifetime -d 'Also measure how long an idle mapping lives (RFC 5780 §4.5, needs RESPONSE-PORT support); bounded by --timeout, which then defaults to 180 s'
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -l no-port-mapping -d 'Skip the port-mapping probe (UPnP-IGD, NAT-PMP, PCP on the default gateway). Without this flag each protocol maps a fresh UDP port for a moment and deletes it'
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -l json -d 'Print the report as JSON on stdout (field names are a stable contract)'
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -s v -l verbose -d 'More logging on stderr (-v info, -vv debug, -vvv trace)'
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -s q -l quiet -d 'No progress and no warnings on stderr; only the result on stdout'
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -l wide -d 'Tables with every column (default: the columns that fit a terminal; --json has all)'
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -s h -l help -d 'Print help'
complete -c natkit -n "__fish_natkit_using_subcommand nat-type" -s V -l version -d 'Print version'
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l listen -d 'UDP and TCP listen address (repeatable) [default: 0.0.0.0:3478 and [::]:3478]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l tls-listen -d 'TLS listen address (repeatable); needs --cert and --key' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l cert -d 'PEM certificate chain for TLS' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l key -d 'PEM private key for TLS' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l alt-ip -d 'Second IP for the RFC 5780 responder (CHANGE-REQUEST change-IP, OTHER-ADDRESS)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l alt-port -d 'Second port for the RFC 5780 responder [default with --alt-ip: listen port + 1]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l realm -d 'Realm of the long-term credentials' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l user -d 'A long-term credential user (repeatable)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l secret -d 'TURN REST shared secret: usernames are `expiry[:name]`, passwords base64(HMAC-SHA1(secret, username))' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l relay-ip -d 'IP to open relayed sockets on (one per address family) [default: the listen IP, or the first interface address]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l external-ip -d 'Public IP to advertise in XOR-RELAYED-ADDRESS (the relay sits behind a 1:1 NAT)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l ports -d 'Port range for relayed sockets [default: 49152-65535]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l allow-peer -d 'Allow peers in this range whatever else applies, except --deny-peer and the relay host\'s own addresses (repeatable)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l deny-peer -d 'Refuse peers in this range (repeatable); wins over everything' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l max-allocations -d 'Allocations in total, 0 for unlimited (lowered at start when the file-descriptor limit cannot hold them) [default: 10000, or the config file\'s total-quota]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l max-connections -d 'Concurrent TCP and TLS connections in total (refused at accept beyond; lowered at start when the file-descriptor limit cannot hold them)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l max-connections-per-ip -d 'Concurrent TCP and TLS connections per source IP (refused at accept beyond)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l first-message-timeout -d 'Seconds a TCP or TLS connection has to deliver its first complete STUN message (after the TLS handshake)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l tls-handshake-timeout -d 'Seconds a TLS client has to finish its handshake' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l idle-timeout -d 'Seconds a TCP or TLS connection that holds no allocation may stay silent before it is closed' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l stream-queue-bytes -d 'Bytes queued toward one TCP or TLS client before relayed data to it is dropped (and counted): a client that does not read cannot make the relay hold more' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l user-quota -d 'Allocations per username (486 beyond), 0 for unlimited [default: 100, or the config file\'s user-quota]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l source-quota -d 'Allocations per client IP address, whatever the username (486 beyond; 0: no limit)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l max-permissions -d 'Permissions per allocation (508 beyond)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l max-tcp-connections -d 'TCP peer connections per TCP allocation (RFC 6062 Connect and inbound peers; 508 beyond)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l tcp-bind-timeout -d 'Seconds a TCP peer connection waits for the client\'s ConnectionBind before it is closed (RFC 6062: 30)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l max-lifetime -d 'Longest allocation lifetime granted, in seconds' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l nonce-lifetime -d 'Seconds a nonce stays valid before 438 Stale Nonce [default: 600, or the config file\'s stale-nonce]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l drain-timeout -d 'On SIGTERM, the longest drain (no new allocations, existing ones go on) before the rest are ended' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l alternate-server -d 'While draining, answer new Allocates with 300 Try Alternate naming this server instead of 508 [default: the config file\'s first alternate-server]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l auth-burst -d 'Failed logins (wrong MESSAGE-INTEGRITY) from one address, or for one username, before it is locked' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l auth-source-rate -d 'Checked logins per second per source address once locked (the first lock lasts 1/RATE s, then doubles)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l auth-user-rate -d 'Checked logins per second per username once locked (the first lock lasts 1/RATE s, then doubles)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l auth-max-backoff -d 'Longest lock of an address or username after failed logins, in seconds' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l unauth-burst -d 'Bytes of unauthenticated answers (Binding, 401 challenges, unsigned errors) one source address may get at once over UDP' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l unauth-rate -d 'Bytes per second of unauthenticated answers one source address gets over UDP after the burst' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l userdb -d 'Users and REST secrets from coturn\'s Redis user database (as `turnadmin -a`/`-s` write them), next to --user/--secret: redis://[:PASS@]HOST:PORT[/DB], or coturn\'s "ip=H port=N dbname=N password=P" [default: the config file\'s redis-userdb]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l userdb-cache -d 'Seconds an answer of the user database (user found or not) is cached; a user added or deleted with turnadmin is seen after at most this long' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l userdb-cache-size -d 'Usernames the user database cache holds at most' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l userdb-timeout -d 'Milliseconds to wait for the user database (connection or lookup) before answering 500 [default: 1000, or the config file\'s connect_timeout]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l userdb-max-pending -d 'Requests waiting for a user database lookup, in total (dropped beyond)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l userdb-max-pending-per-ip -d 'Requests waiting for a user database lookup per source IP (dropped beyond)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l metrics -d 'Serve Prometheus metrics over HTTP on this address' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l metrics-max-connections -d 'Connections the --metrics endpoint holds at once (an eighth of them per source address; refused beyond)' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l metrics-header-timeout -d 'Seconds a --metrics client has to send its whole request head before it is closed' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l config -d 'Read options from a coturn turnserver.conf (flags given here win)' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l workers -d 'Worker threads, each with its own SO_REUSEPORT socket per UDP listen address [default: half the CPU count, 1 to 8]' -r
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l allow-loopback-peers -d 'Let clients relay to loopback addresses (127.0.0.0/8, ::1)'
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l allow-private-peers -d 'Let clients relay to private and link-local addresses (RFC 1918, 100.64/10, fc00::/7, 169.254/16, fe80::/10)'
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l allow-relay-host-peers -d 'Let clients relay to other ports of the relay host\'s own non-loopback addresses (interfaces, --relay-ip, --external-ip); its listening ports stay refused'
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l json -d 'Print the report as JSON on stdout (field names are a stable contract)'
complete -c natkit -n "__fish_natkit_using_subcommand relay" -s v -l verbose -d 'More logging on stderr (-v info, -vv debug, -vvv trace)'
complete -c natkit -n "__fish_natkit_using_subcommand relay" -s q -l quiet -d 'No progress and no warnings on stderr; only the result on stdout'
complete -c natkit -n "__fish_natkit_using_subcommand relay" -l wide -d 'Tables with every column (default: the columns that fit a terminal; --json has all)'
complete -c natkit -n "__fish_natkit_using_subcommand relay" -s h -l help -d 'Print help'
complete -c natkit -n "__fish_natkit_using_subcommand relay" -s V -l version -d 'Print version'
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l transport -d 'Transport to the server (a turns: URI means tls); default udp' -r -f -a "udp\t''
tcp\t''
tls\t''"
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -s u -l user -d 'Long-term credential username (with --password), or the name part of a REST username (with --secret)' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -s p -l password -d 'Long-term credential password' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l secret -d 'TURN REST API shared secret (coturn use-auth-secret / static-auth-secret): natkit makes the credentials' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l realm -d 'The realm you expect; a server announcing another one fails the check' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l peer -d 'Test data through the relay to this UDP echo peer instead of to a second allocation' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l peer-transport -d 'tcp: add a TCP relaying step (RFC 6062): a TCP allocation, Connect to --peer (a TCP echo peer), bytes through the relay and back; needs --transport tcp or tls. The UDP steps then use a second allocation as their peer' -r -f -a "udp\t''
tcp\t''"
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l packets -d 'Packets sent through the relay for the quality test' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l rate -d 'Packets per second for the quality test (50 is like an audio stream)' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l size -d 'Payload bytes per test packet' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l lifetime -d 'Requested allocation lifetime in seconds' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l nonce-wait -d 'Wait this long idle, then check whether the first nonce is still accepted (coturn\'s default expiry is 600 s)' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l ca -d 'Trust this PEM CA certificate for TLS' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l timeout -d 'Seconds to wait for each answer' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l every -d 'Run the audit again and again, a run every SECS (counted from the previous start; never overlapping), until Ctrl-C: one line per run, or JSON Lines with --json' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l metrics -d 'With --every: serve the last run\'s results as Prometheus metrics at http://ADDR/metrics' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l metrics-max-connections -d 'Connections the --metrics endpoint holds at once (an eighth of them per source address; refused beyond)' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l metrics-header-timeout -d 'Seconds a --metrics client has to send its whole request head before it is closed' -r
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l insecure -d 'Accept any TLS certificate (the audit still reports a bad one)'
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -s 4 -l ipv4 -d 'Use only IPv4 addresses of the server'
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -s 6 -l ipv6 -d 'Use only IPv6 addresses of the server'
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l json -d 'Print the report as JSON on stdout (field names are a stable contract)'
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -s v -l verbose -d 'More logging on stderr (-v info, -vv debug, -vvv trace)'
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -s q -l quiet -d 'No progress and no warnings on stderr; only the result on stdout'
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -l wide -d 'Tables with every column (default: the columns that fit a terminal; --json has all)'
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -s h -l help -d 'Print help'
complete -c natkit -n "__fish_natkit_using_subcommand turn-alloc" -s V -l version -d 'Print version'
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l listen -d 'Where to serve HTTP(S) and WebSocket: PORT, IP, IP:PORT, [IPv6]:PORT or HOST:PORT' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l cert -d 'Serve HTTPS with this certificate chain (PEM); needs --key' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l key -d 'Private key (PEM) for --cert' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l redis -d 'Share rooms with other nodes through Redis, e.g. redis://127.0.0.1:6379/' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l stun -d 'STUN URI handed to clients in ice_servers (repeatable), e.g. stun:stun.example.org:3478' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l turn -d 'TURN URI handed to clients in ice_servers (repeatable), e.g. turn:turn.example.org:3478?transport=udp' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l turn-secret -d 'Give each client its own time-limited TURN REST credentials made with this shared secret (coturn use-auth-secret, `natkit relay --secret`)' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l turn-secret-file -d 'Read the TURN REST shared secret from this file (surrounding whitespace ignored), so it stays out of the process list; a systemd credential (deploy/natkit-signal.service)' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l turn-ttl -d 'Lifetime of the per-client TURN credentials, in seconds' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l max-room -d 'Most members in one room' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l max-frame -d 'Largest message in bytes; bigger ones get an error' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l max-rate -d 'Messages per second one connection may send (bursts of four times this are allowed)' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l max-conns-per-ip -d 'Open connections per client IP address (an IPv6 /64 counts as one address); socket.io sessions are counted apart against the same cap' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l allow-origin -d 'A web page origin allowed to use the server besides its own page (repeatable), e.g. https://app.example.org; * allows every site. Clients that send no Origin are always allowed' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l max-conns -d 'Open TCP connections in total, counted at accept; socket.io sessions are counted apart against the same cap [default: the file-descriptor limit minus 64, at most 10000]' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l header-timeout -d 'Seconds a connection has to send its HTTP request head (TLS handshake included), after accept and after each response on a kept-alive connection' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l idle-timeout -d 'Seconds without receiving anything after which a connection is closed (longer than --ping-interval)' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l ping-interval -d 'Seconds between keepalive pings; a client silent for two intervals is dropped and its room told' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l node-ttl -d 'With --redis: seconds after which a node that stopped heartbeating counts as dead and its members leave their rooms' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l metrics -d 'Serve Prometheus metrics at http://ADDR/metrics' -r
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l tls-self-signed -d 'Serve HTTPS with a certificate made at start (browsers give the camera only to secure origins)'
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l no-stun -d 'Do not answer STUN Binding on the UDP port of --listen (by default it does: `natkit punch` asks there to learn whether its NAT\'s mapping varies with the destination port)'
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l json -d 'Print the report as JSON on stdout (field names are a stable contract)'
complete -c natkit -n "__fish_natkit_using_subcommand signal" -s v -l verbose -d 'More logging on stderr (-v info, -vv debug, -vvv trace)'
complete -c natkit -n "__fish_natkit_using_subcommand signal" -s q -l quiet -d 'No progress and no warnings on stderr; only the result on stdout'
complete -c natkit -n "__fish_natkit_using_subcommand signal" -l wide -d 'Tables with every column (default: the columns that fit a terminal; --json has all)'
complete -c natkit -n "__fish_natkit_using_subcommand signal" -s h -l help -d 'Print help'
complete -c natkit -n "__fish_natkit_using_subcommand signal" -s V -l version -d 'Print version'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l signal -d 'The signal server: ws://HOST:PORT, wss://HOST:PORT (or http(s)://)' -r
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l room -d 'Room to meet the peer in' -r
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l stun -d 'STUN server for a server-reflexive candidate (repeatable): HOST[:PORT] or stun:HOST[:PORT]. Without --stun and --turn, the STUN/TURN servers the signaling server hands out are used' -r
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l turn -d 'TURN server for a relayed candidate (UDP): HOST[:PORT] or turn:HOST[:PORT]' -r
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l turn-user -d 'TURN long-term credential username (with --turn-password)' -r
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l turn-password -d 'TURN long-term credential password' -r
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l turn-secret -d 'TURN REST API shared secret (coturn use-auth-secret): natkit makes time-limited credentials' -r
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l send -d 'Send this file to the peer (its size and SHA-256 are checked at the end)' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l recv -d 'Receive the peer\'s file into this path' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l host-ip -d 'Offer only these local IPs as host candidates (default: every interface but loopback)' -r
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l timeout -d 'Give up when the peer has not joined, or no path works, after this many seconds' -r
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l path-lost-after -d 'Report the selected path lost when its consent checks (RFC 7675) go unanswered this many seconds; consent itself expires after 30 s, and then the session ends' -r
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l relay-only -d 'Offer only the TURN relayed candidate: all traffic goes through the relay (TURN from --turn, or from the signaling server\'s ice_servers)'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l no-relay -d 'Never use a TURN relay, even one the signal server hands out: direct paths only'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l no-birthday -d 'Never try the birthday method (many mappings and random-port probes) when one NAT is symmetric and the other is not'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l no-port-mapping -d 'Do not ask the router on the way to the servers (PCP, NAT-PMP, UPnP-IGD) to map the punch socket\'s port; by default a mapping is offered as a candidate and deleted at the end'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l force -d 'With --recv: overwrite the file if it exists'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l stdio -d 'Pipe stdin to the peer and the peer to stdout (like netcat)'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l insecure -d 'Accept a self-signed certificate from a wss:// signal server'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l json -d 'Print the report as JSON on stdout (field names are a stable contract)'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -s v -l verbose -d 'More logging on stderr (-v info, -vv debug, -vvv trace)'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -s q -l quiet -d 'No progress and no warnings on stderr; only the result on stdout'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -l wide -d 'Tables with every column (default: the columns that fit a terminal; --json has all)'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -s h -l help -d 'Print help'
complete -c natkit -n "__fish_natkit_using_subcommand punch" -s V -l version -d 'Print version'
complete -c natkit -n "__fish_natkit_using_subcommand call" -l signal -d 'Signaling server: ws://HOST:PORT or wss://HOST:PORT (`natkit signal`; path /ws by default)' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l room -d 'Room to join; the browser page or another `natkit call` joins the same one' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l send -d 'What to send: `test` (moving colour bars with a frame counter and the time, VP8, plus a 440 Hz Opus tone), a VP8 FILE.ivf (looped, plus the tone), or `none` (receive only)' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l duration -d 'Hang up after this many seconds connected (default: run until Ctrl-C or the peer leaves)' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l record -d 'Write received video to DIR/video.ivf and audio to DIR/audio.ogg' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand call" -l bind -d 'Local UDP address for media; a specific IP offers only that host candidate' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l stun -d 'STUN server for a server-reflexive candidate (repeatable): HOST[:PORT] or stun:HOST[:PORT]. Without --stun and --turn, the STUN/TURN servers the signaling server hands out are used' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l turn -d 'TURN server for a relayed candidate (UDP): HOST[:PORT] or turn:HOST[:PORT]' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l turn-user -d 'TURN long-term credential username (with --turn-password)' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l turn-password -d 'TURN long-term credential password' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l turn-secret -d 'TURN REST API shared secret (coturn use-auth-secret): natkit makes time-limited credentials' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l wait -d 'Give up if no peer is in the room after this many seconds' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l connect-timeout -d 'Give up if ICE and DTLS have not connected this many seconds after the offer' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l size -d 'Video size and rate of `--send test`' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l fps -d 'Frames per second of `--send test`' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l bitrate -d 'Target video bitrate of `--send test`' -r
complete -c natkit -n "__fish_natkit_using_subcommand call" -l ca -d 'Trust this PEM CA certificate for wss://' -r -F
complete -c natkit -n "__fish_natkit_using_subcommand call" -l relay-only -d 'Offer only the TURN relayed candidate: all traffic goes through the relay (TURN from --turn, or from the signaling server\'s ice_servers)'
complete -c natkit -n "__fish_natkit_using_subcommand call" -l insecure -d 'Accept any TLS certificate from a wss:// signaling server (e.g. --tls-self-signed)'
complete -c natkit -n "__fish_natkit_using_subcommand call" -l json -d 'Print the report as JSON on stdout (field names are a stable contract)'
complete -c natkit -n "__fish_natkit_using_subcommand call" -s v -l verbose -d 'More logging on stderr (-v info, -vv debug, -vvv trace)'
complete -c natkit -n "__fish_natkit_using_subcommand call" -s q -l quiet -d 'No progress and no warnings on stderr; only the result on stdout'
complete -c natkit -n "__fish_natkit_using_subcommand call" -l wide -d 'Tables with every column (default: the columns that fit a terminal; --json has all)'
complete -c natkit -n "__fish_natkit_using_subcommand call" -s h -l help -d 'Print help'
complete -c natkit -n "__fish_natkit_using_subcommand call" -s V -l version -d 'Print version'
