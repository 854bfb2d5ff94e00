# shellcheck shell=sh
# lab/lib.sh: the scenario library of the kernel lab, sourced by lab/scenarios/*.sh inside the
# guest. It owns the standard topology (network namespaces joined by veth pairs and bridges,
# with real packets between them), the helpers to act in a namespace and to speak HTTP from the
# client, and the assertions that print FAIL lines. It must never touch IPVS or nftables state
# of the appliance on its own: scenarios (or the program under test) do that explicitly.
#
# Topology (addresses are variables below):
#
#   client 10.0.0.2/24 ──br-front── 10.0.0.1/24 appliance 10.1.0.1/24 ──br-back── n1 10.1.0.11
#   (default via 10.0.0.1)          (VIP 10.0.0.100 on                            n2 10.1.0.12
#                                    `front` when added)                          n3 10.1.0.13
#
# The nodes' default route is 10.1.0.254, an address nobody holds: replies to the client never go
# back through the appliance by routing, so forwarding works only with full NAT (IPVS masquerade
# plus an nftables masquerade by destination on the appliance; see KERNEL-LAB.md).

# Debian's static busybox runs its own applets first, and its `ip` has no netns: always use the
# full path to iproute2's. For `ip` itself prefer `$IP -n NS ...` to `in_ns NS $IP ...`: it skips
# the mount namespace `ip netns exec` sets up, which is slow under TCG.
IP=/usr/sbin/ip

LAB_NODES="n1 n2 n3"
LAB_CLIENT_ADDR=10.0.0.2
LAB_FRONT_ADDR=10.0.0.1
LAB_FRONT_PREFIX=24
LAB_VIP=10.0.0.100
LAB_BACK_ADDR=10.1.0.1
LAB_BACK_PREFIX=24
LAB_NODE_GATEWAY=10.1.0.254
LAB_NODEPORT=30080
LAB_HTTP_TIMEOUT=${LAB_HTTP_TIMEOUT:-5}

LAB_FAILURES=0

log() { echo "lab: $*"; }

# A failed check: the scenario goes on, and fails at lab_done.
fail() {
    echo "FAIL: $*"
    LAB_FAILURES=$((LAB_FAILURES + 1))
}

# A failed precondition: nothing after it can mean anything.
die() {
    echo "FAIL: $*"
    exit 1
}

# Runs a command that must succeed, echoing it first.
must() {
    echo "+ $*"
    "$@" || die "command failed (exit $?): $*"
}

# Ends the scenario: exit 0 only if no check failed.
lab_done() {
    if [ "$LAB_FAILURES" -ne 0 ]; then
        echo "lab: $LAB_FAILURES check(s) failed"
        exit 1
    fi
    log "all checks passed"
    exit 0
}

# Marks a point in time for `cargo xtask kernel-lab --bench`.
lab_bench() {
    [ "${LAB_BENCH:-0}" = 1 ] && echo "EDGELB-LAB-BENCH name=$1 uptime=$(cut -d' ' -f1 /proc/uptime)"
    return 0
}

# in_ns NS CMD [ARG...]: runs CMD inside network namespace NS.
in_ns() {
    _ns=$1
    shift
    "$IP" netns exec "$_ns" "$@"
}

# Address of a node: n1 -> 10.1.0.11.
node_addr() {
    echo "10.1.0.1${1#n}"
}

# --- assertions -----------------------------------------------------------------------------

# assert_eq WHAT EXPECTED ACTUAL
assert_eq() {
    if [ "$2" = "$3" ]; then
        echo "ok: $1"
    else
        fail "$1: expected '$2', got '$3'"
    fi
}

# assert_contains WHAT HAYSTACK NEEDLE
assert_contains() {
    case "$2" in
        *"$3"*) echo "ok: $1" ;;
        *) fail "$1: '$3' not found in: $2" ;;
    esac
}

# assert_ok WHAT CMD [ARG...]: CMD must exit 0.
assert_ok() {
    _what=$1
    shift
    if "$@"; then
        echo "ok: $_what"
    else
        fail "$_what: command failed (exit $?): $*"
    fi
}

# assert_fails WHAT CMD [ARG...]: CMD must exit non-zero.
assert_fails() {
    _what=$1
    shift
    if "$@"; then
        fail "$_what: command succeeded but should have failed: $*"
    else
        echo "ok: $_what"
    fi
}

# --- topology -------------------------------------------------------------------------------

# lab_ns NAME: a network namespace with loopback up.
lab_ns() {
    must "$IP" netns add "$1"
    must "$IP" -n "$1" link set lo up
}

# lab_bridge NAME: a bridge in the guest's root namespace (the "switch"), no address.
lab_bridge() {
    must "$IP" link add "$1" type bridge
    must "$IP" link set "$1" up
}

# lab_plug NS IFNAME HOSTIF BRIDGE ADDR/PREFIX: a veth pair whose IFNAME end lives in NS with
# ADDR, and whose HOSTIF end is a port of BRIDGE in the root namespace.
lab_plug() {
    must "$IP" link add "$3" type veth peer name "$2" netns "$1"
    must "$IP" link set "$3" master "$4" up
    must "$IP" -n "$1" addr add "$5" dev "$2"
    must "$IP" -n "$1" link set "$2" up
}

# lab_topology: client, appliance and nodes, wired as drawn at the top of this file.
lab_topology() {
    lab_bridge br-front
    lab_bridge br-back
    lab_ns client
    lab_plug client eth0 c-eth0 br-front "$LAB_CLIENT_ADDR/$LAB_FRONT_PREFIX"
    must "$IP" -n client route add default via "$LAB_FRONT_ADDR"
    lab_ns appliance
    lab_plug appliance front a-front br-front "$LAB_FRONT_ADDR/$LAB_FRONT_PREFIX"
    lab_plug appliance back a-back br-back "$LAB_BACK_ADDR/$LAB_BACK_PREFIX"
    for _n in $LAB_NODES; do
        lab_ns "$_n"
        lab_plug "$_n" eth0 "$_n-eth0" br-back "$(node_addr "$_n")/$LAB_BACK_PREFIX"
        must "$IP" -n "$_n" route add default via "$LAB_NODE_GATEWAY" dev eth0
    done
    lab_bench topology-up
}

# lab_add_vip [ADDR]: puts the VIP on the appliance's client side, as the appliance would.
lab_add_vip() {
    must "$IP" -n appliance addr add "${1:-$LAB_VIP}/32" dev front
}

# lab_appliance_forwarding: routing on, and conntrack for IPVS so nftables NAT sees its flows.
lab_appliance_forwarding() {
    must in_ns appliance sysctl -q -w net.ipv4.ip_forward=1
    must in_ns appliance sysctl -q -w net.ipv4.vs.conntrack=1
}

# lab_masquerade_nodes: source NAT to the appliance's address for packets to the nodes. It must
# match by destination: IPVS translates addresses itself, so `ct status dnat` never matches.
lab_masquerade_nodes() {
    _set=
    for _n in $LAB_NODES; do
        _set="${_set:+$_set, }$(node_addr "$_n")"
    done
    must in_ns appliance nft -f - <<NFT
table ip lab_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip daddr { $_set } masquerade
    }
}
NFT
}

# lab_nodes_serve [PORT]: busybox httpd on every node, serving "node=<name>" on PORT, and waits
# until each answers from the appliance (which proves the back side works without IPVS).
lab_nodes_serve() {
    _port=${1:-$LAB_NODEPORT}
    for _n in $LAB_NODES; do
        mkdir -p "/srv/$_n"
        echo "node=$_n" >"/srv/$_n/index.html"
        must in_ns "$_n" httpd -p "$_port" -h "/srv/$_n"
    done
    for _n in $LAB_NODES; do
        _url="http://$(node_addr "$_n"):$_port/"
        _i=0
        until [ "$(in_ns appliance timeout "$LAB_HTTP_TIMEOUT" wget -q -O - "$_url" 2>/dev/null)" = "node=$_n" ]; do
            _i=$((_i + 1))
            [ "$_i" -lt 50 ] || die "node $_n does not answer on $_url"
            sleep 0.1
        done
    done
    lab_bench nodes-serving
}

# http_get URL: GET from the client namespace; prints the body, fails (non-zero) on any error
# or after LAB_HTTP_TIMEOUT seconds.
http_get() {
    in_ns client timeout "$LAB_HTTP_TIMEOUT" wget -q -O - "$1"
}

# lab_dump: the appliance's view, for the log when something failed.
lab_dump() {
    echo "--- appliance state ---"
    in_ns appliance ipvsadm -Ln --stats
    in_ns appliance nft list ruleset
    "$IP" -n appliance -br addr
    echo "-----------------------"
}

# --- the edgelb appliance -------------------------------------------------------------------
# Helpers for scenarios that run the real appliance (`--ship target/release/edgelb`, and
# `--ship /usr/bin/curl` for its REST API) in the appliance namespace.

EDGELB_DATA=/var/lib/edgelb
EDGELB_URL=https://127.0.0.1:8443
EDGELB_STARTS=0

# wait_until SECONDS WHAT CMD [ARG...]: polls CMD every 0.2 s until it succeeds; a failed check
# (returning 1) if it never does.
wait_until() {
    _t=$1
    _w=$2
    shift 2
    _i=0
    until "$@" >/dev/null 2>&1; do
        _i=$((_i + 1))
        if [ "$_i" -ge $((_t * 5)) ]; then
            fail "$_w: not within ${_t}s"
            return 1
        fi
        sleep 0.2
    done
    echo "ok: $_w"
}

# edgelb_start [ARG...]: `edgelb serve` in the appliance namespace, in the background, until it
# listens. Sets EDGELB_PID and EDGELB_LOG, and EDGELB_TOKEN on the first start.
edgelb_start() {
    command -v edgelb >/dev/null || die "no edgelb in the VM: --ship target/release/edgelb"
    command -v curl >/dev/null || die "no curl in the VM: --ship /usr/bin/curl"
    EDGELB_STARTS=$((EDGELB_STARTS + 1))
    EDGELB_LOG=/tmp/edgelb.$EDGELB_STARTS.log
    echo "+ edgelb serve $* (log $EDGELB_LOG)"
    "$IP" netns exec appliance edgelb serve --data-dir "$EDGELB_DATA" --listen 127.0.0.1:8443 "$@" \
        >"$EDGELB_LOG" 2>&1 &
    EDGELB_PID=$!
    _i=0
    until grep -q "listening on" "$EDGELB_LOG"; do
        _i=$((_i + 1))
        if [ "$_i" -ge 150 ] || ! kill -0 "$EDGELB_PID" 2>/dev/null; then
            cat "$EDGELB_LOG"
            die "edgelb did not start"
        fi
        sleep 0.2
    done
    _tok=$(sed -n 's/^ *API token: *//p' "$EDGELB_LOG")
    [ -n "$_tok" ] && EDGELB_TOKEN=$_tok
    lab_bench "edgelb-started-$EDGELB_STARTS"
}

# edgelb_stop: SIGTERM, and waits until the process is gone.
edgelb_stop() {
    kill -TERM "$EDGELB_PID" 2>/dev/null
    _i=0
    while kill -0 "$EDGELB_PID" 2>/dev/null; do
        _i=$((_i + 1))
        [ "$_i" -lt 100 ] || die "edgelb did not stop on SIGTERM"
        sleep 0.1
    done
    wait "$EDGELB_PID" 2>/dev/null
    echo "edgelb stopped"
}

# edgelb_api METHOD PATH [JSON]: a REST call as the admin; prints the body, fails on an error
# status.
edgelb_api() {
    if [ $# -ge 3 ]; then
        in_ns appliance curl -sS --fail-with-body --max-time 20 --cacert "$EDGELB_DATA/tls/cert.pem" \
            -H "Authorization: Bearer $EDGELB_TOKEN" -H 'Content-Type: application/json' \
            -X "$1" --data "$3" "$EDGELB_URL$2"
    else
        in_ns appliance curl -sS --fail-with-body --max-time 20 --cacert "$EDGELB_DATA/tls/cert.pem" \
            -H "Authorization: Bearer $EDGELB_TOKEN" -X "$1" "$EDGELB_URL$2"
    fi
}

# ipvs_flat: the appliance's IPVS table as sorted lines, one per service
# ("TCP 10.0.0.100:80 rr [persistent 10800]") and one per real server
# ("<service> -> 10.1.0.11:30080 Masq 1"), so two listings compare with `=`.
ipvs_flat() {
    in_ns appliance ipvsadm -Ln | awk '
        $1 == "TCP" || $1 == "UDP" || $1 == "SCTP" {
            svc = $1 " " $2 " " $3
            if ($4 == "persistent") svc = svc " persistent " $5
            print svc
            next
        }
        $1 == "->" && $2 != "RemoteAddress:Port" { print svc " -> " $2 " " $3 " " $4 }
    ' | sort
}

# api_flat JSON: the same lines from a Service's status document (GET .../status).
api_flat() {
    echo "$1" | jq -r '.virtual_services[]
        | ("\(.protocol) \(.ip):\(.port) \(.scheduler)"
           + (if .persistence_timeout_seconds then " persistent \(.persistence_timeout_seconds)" else "" end)) as $s
        | $s, (.real_servers[]
            | ({"masquerade": "Masq", "route": "Route", "tunnel": "Tunnel"}[.method] // .method) as $m
            | "\($s) -> \(.ip):\(.port) \($m) \(.weight)")' | sort
}

# count_of WORD LIST...: how many of LIST equal WORD.
count_of() {
    _w=$1
    shift
    _c=0
    for _x in "$@"; do
        [ "$_x" = "$_w" ] && _c=$((_c + 1))
    done
    echo "$_c"
}

# lab_nodes_serve_peer [PORT]: busybox httpd on every node whose /cgi-bin/peer answers
# "node=<name> peer=<client address as the node sees it>" on PORT: which source address the
# Service saw (the client's with plain NAT, the appliance's with full NAT). "/" answers
# "node=<name>" as with lab_nodes_serve.
lab_nodes_serve_peer() {
    _port=${1:-$LAB_NODEPORT}
    for _n in $LAB_NODES; do
        mkdir -p "/srv/peer-$_n/cgi-bin"
        echo "node=$_n" >"/srv/peer-$_n/index.html"
        # httpd listens dual-stack: an IPv4 peer arrives as [::ffff:a.b.c.d].
        cat >"/srv/peer-$_n/cgi-bin/peer" <<'CGI'
#!/bin/sh
peer=${REMOTE_ADDR#\[}
peer=${peer%\]}
printf 'Content-Type: text/plain\r\n\r\nnode=@NODE@ peer=%s\n' "${peer#::ffff:}"
CGI
        sed -i "s/@NODE@/$_n/" "/srv/peer-$_n/cgi-bin/peer"
        chmod +x "/srv/peer-$_n/cgi-bin/peer"
        must in_ns "$_n" httpd -p "$_port" -h "/srv/peer-$_n"
    done
    for _n in $LAB_NODES; do
        _url="http://$(node_addr "$_n"):$_port/cgi-bin/peer"
        _i=0
        _want="node=$_n peer=$LAB_BACK_ADDR"
        until _got=$(in_ns appliance timeout "$LAB_HTTP_TIMEOUT" wget -q -O - "$_url" 2>&1) && [ "$_got" = "$_want" ]; do
            _i=$((_i + 1))
            [ "$_i" -lt 50 ] || die "node $_n does not answer '$_want' on $_url: $_got"
            sleep 0.1
        done
    done
    lab_bench nodes-serving-peer
}

# Where the scenarios that check it find deploy/grafana's dashboard (shipped with --ship).
LAB_DASHBOARD=/lab/grafana-dashboard.json

# lab_allowed_has PREFIX: the appliance's loadBalancerSourceRanges set holds PREFIX (IPv4).
lab_allowed_has() { in_ns appliance nft list set inet edgelb allowed_v4 | grep -q "$1"; }
# lab_allowed_only NEW OLD: it holds NEW and no longer OLD.
lab_allowed_only() { lab_allowed_has "$1" && ! lab_allowed_has "$2"; }

# lab_peers URL WHAT N: N requests from the client to URL (a node's /cgi-bin/peer, see
# lab_nodes_serve_peer); prints the distinct "peer=" values seen, and fails a check for each
# request that gets no answer. WHAT names them in the log.
lab_peers() {
    _seen=
    _i=0
    while [ "$_i" -lt "$3" ]; do
        _i=$((_i + 1))
        _body=$(http_get "$1") || {
            fail "$2: request $_i to $1 failed"
            continue
        }
        echo "$2: $_body" >&2
        _seen="$_seen ${_body#* }"
    done
    echo "$_seen" | tr ' ' '\n' | sed '/^$/d' | sort -u | tr '\n' ' ' | sed 's/ $//'
}

# lab_nodes_route_via_appliance: the nodes reach the clients' network through the appliance
# (their gateway for it), as plain NAT needs; their default route stays elsewhere.
lab_nodes_route_via_appliance() {
    for _n in $LAB_NODES; do
        must "$IP" -n "$_n" route add "${LAB_FRONT_ADDR%.*}.0/$LAB_FRONT_PREFIX" via "$LAB_BACK_ADDR" dev eth0
    done
}
