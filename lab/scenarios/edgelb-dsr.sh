# shellcheck shell=sh disable=SC2317 # check functions run through wait_until
# lab/scenarios/edgelb-dsr.sh: `direct` and `tunnel` forwarding keep the client's address, and the
# replies go from the node straight to the client, not through the appliance.
#
# The nodes get a second interface on the clients' segment: that is their route back to the
# client (the appliance is not on it). On each node an nftables DNAT of VIP:80 to the node's own
# server on 30080 stands in for what kube-proxy does for a Service's load-balancer IP (`ipMode:
# VIP`): it takes the packet addressed to the VIP and hands it to a local endpoint, and the reply
# leaves with the VIP as its source. For `tunnel`, ipip's `tunl0` is up on every node; rp_filter
# is loose on the nodes' interfaces and off on tunl0, as docs/operations.md asks. With
# `externalTrafficPolicy: Local` only the nodes with ready endpoints answer; loadBalancerSourceRanges
# still drop a client outside them at the appliance. IPv4 (TCP and UDP)
# and IPv6 (TCP, IPv6 in IPv6 for the tunnel). Full-sized segments through a tunnel: lost when
# the client drops ICMP, carried when the nodes clamp their MSS, and carried by path-MTU
# discovery otherwise (IPv4 and IPv6). One Service goes direct -> tunnel -> fullnat -> direct and
# answers after each switch. Needs `--ship
# target/release/edgelb --ship /usr/bin/curl --ship /usr/bin/socat --ship /usr/bin/jq`.

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

VIP=$LAB_VIP
export NO_COLOR=1
PEER_URL="http://$VIP/cgi-bin/peer"

lab_topology
for _n in $LAB_NODES; do
    # 10.0.0.11-13: the node on the clients' segment, its route back to them.
    lab_plug "$_n" eth1 "$_n-eth1" br-front "10.0.0.1${_n#n}/$LAB_FRONT_PREFIX"
    # Loose on the interfaces (a request comes in on eth0, its client is reached through eth1);
    # off on tunl0, which has no address, and any reverse-path check fails on such a device (the
    # kernel uses the larger of `all` and the device's value, so `all` is 0).
    for _if in eth0 eth1; do
        must in_ns "$_n" sysctl -q -w "net.ipv4.conf.$_if.rp_filter=2"
    done
    must in_ns "$_n" sysctl -q -w net.ipv4.conf.all.rp_filter=0
    must "$IP" -n "$_n" link set tunl0 up
    must in_ns "$_n" sysctl -q -w net.ipv4.conf.tunl0.rp_filter=0
    must in_ns "$_n" nft -f - <<NFT
table ip kube_proxy_emulation {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $VIP tcp dport 80 dnat to $(node_addr "$_n"):$LAB_NODEPORT
        ip daddr $VIP udp dport 53 dnat to $(node_addr "$_n"):5353
    }
}
NFT
    # UDP: answers with the address the request came from.
    # Bound to the node's address, so that its replies leave from the address the DNAT chose
    # (from any other, conntrack would not turn them back into the VIP's).
    in_ns "$_n" socat "UDP4-RECVFROM:5353,bind=$(node_addr "$_n"),fork" SYSTEM:"echo node=$_n peer=\$SOCAT_PEERADDR" &
done
lab_nodes_serve_peer "$LAB_NODEPORT"

# IPv6: the client, the appliance and the nodes on both segments; the same emulation of
# kube-proxy for the IPv6 VIP, and ip6_tunnel's ip6tnl0 up for IPv6-in-IPv6.
VIP6=fd00::100
must "$IP" -n client addr add fd00::2/64 dev eth0 nodad
must "$IP" -n appliance addr add fd00::1/64 dev front nodad
must "$IP" -n appliance addr add fd01::1/64 dev back nodad
for _n in $LAB_NODES; do
    must "$IP" -n "$_n" addr add "fd01::1${_n#n}/64" dev eth0 nodad
    must "$IP" -n "$_n" addr add "fd00::1${_n#n}/64" dev eth1 nodad
    must "$IP" -n "$_n" link set ip6tnl0 up
    must in_ns "$_n" nft -f - <<NFT
table ip6 kube_proxy_emulation {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip6 daddr $VIP6 tcp dport 80 dnat to [fd01::1${_n#n}]:$LAB_NODEPORT
    }
}
NFT
done

# three_real_servers METHOD PORT: IPVS forwards the VIP to the three nodes at PORT with METHOD.
three_real_servers() {
    [ "$(in_ns appliance ipvsadm -Ln -t "$VIP:80" | grep -Ec "10\.1\.0\.1[1-3]:$2 +$1 ")" = 3 ]
}
# packets IN|OUT: what IPVS counted for the VIP's TCP port, from the clients or towards them
# (replies it carried). Its estimator folds the counters in every 2 s: wait for it.
packets() {
    sleep 2.5
    in_ns appliance ipvsadm -Ln --stats --exact -t "$VIP:80" | awk -v c="$1" '$1 == "TCP" {print (c == "IN" ? $4 : $5)}'
}
# no_reply_through_appliance WHAT: the requests of `peers WHAT` came in through the appliance,
# and not one packet went back out through it.
no_reply_through_appliance() {
    _in=$(packets IN)
    _out=$(packets OUT)
    peers "$1" >/dev/null
    assert_ok "$1: the requests came in through the appliance" [ "$(packets IN)" -gt "$_in" ]
    assert_eq "$1: no reply went back out through it" "$_out" "$(packets OUT)"
}
# peers WHAT: six requests to the VIP (lab_peers).
peers() { lab_peers "$PEER_URL" "$1" 6; }
# udp_peer: a UDP request to VIP:53; prints the "peer=" the node saw (its address, not port).
# The node forks a shell per datagram, slow under emulation: socat waits up to 4 s for the answer
# after sending (its default is half a second), and a lost first try is tried again once.
udp_peer() {
    for _try in 1 2; do
        _got=$(echo ask | in_ns client timeout 10 socat -t 4 -T 4 - "UDP4:$VIP:53" | sed -n 's/.* peer=\([^:]*\).*/peer=\1/p')
        [ -n "$_got" ] && break
        echo "udp_peer: no answer on try $_try" >&2
    done
    echo "$_got"
}

# dsr_dump: the nodes' side, for the log when a check failed.
dsr_dump() {
    in_ns appliance ipvsadm -Ln --stats --exact
    for _n in $LAB_NODES; do
        echo "--- $_n ---"
        "$IP" -n "$_n" -s link show tunl0
        in_ns "$_n" nft list ruleset
        in_ns "$_n" cat /proc/net/snmp | grep -E '^(Ip|Tcp|Udp):'
        # Nonzero counters only: reverse-path drops, checksum errors and the like.
        in_ns "$_n" cat /proc/net/netstat | awk '{ if (NR % 2) { split($0, k) } else { for (i = 2; i <= NF; i++) if ($i != 0) printf "%s=%s ", k[i], $i; print "" } }'
    done
}
# The UDP server answers on the node itself (without IPVS).
assert_eq "the nodes' UDP server answers" "node=n1 peer=10.1.0.1" \
    "$(echo ask | in_ns appliance timeout 10 socat -t 4 -T 4 - UDP4:10.1.0.11:5353 | sed 's/:[0-9]*$//')"

edgelb_start --dataplane ipvs --interface front --resync-seconds 2
must edgelb_api POST /api/v1/pools '{"name":"lab","ranges":["10.0.0.100/32"],"scheduler":"rr","forwarding":"direct"}' >/dev/null
must edgelb_api POST /api/v1/clusters '{"name":"lab"}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/nodes '{"nodes":[{"name":"n1","addresses":["10.1.0.11"]},
 {"name":"n2","addresses":["10.1.0.12"]},{"name":"n3","addresses":["10.1.0.13"]}]}' >/dev/null
# service FORWARDING [FIELDS]: the Service, with that method of its own ("null": the pool's), and
# FIELDS (`"name":value,`) besides.
service() {
    must edgelb_api PUT /api/v1/clusters/lab/services/default/web "{\"uid\":\"u-web\",\"forwarding\":$1,${2:-}
     \"ports\":[{\"name\":\"http\",\"protocol\":\"TCP\",\"port\":80,\"node_port\":$LAB_NODEPORT},
               {\"name\":\"dns\",\"protocol\":\"UDP\",\"port\":53,\"node_port\":30053}]}" >/dev/null
}

service null
wait_until 10 "direct (the pool's): IPVS routes the VIP to the three nodes' port 80" three_real_servers Route 80
lab_bench direct-programmed
assert_eq "direct: every node sees the client's own address" "peer=$LAB_CLIENT_ADDR" "$(peers direct)"
no_reply_through_appliance direct
assert_eq "direct, UDP: the node sees the client's own address" "peer=$LAB_CLIENT_ADDR" "$(udp_peer)"

# loadBalancerSourceRanges stay enforced at the appliance: a client outside them gets no answer.
service null '"source_ranges":["192.0.2.0/24"],'
wait_until 10 "direct: the source range is in the appliance's table" lab_allowed_has 192.0.2.0/24
LAB_HTTP_TIMEOUT=2 assert_fails "direct: a client outside the source ranges gets no answer" http_get "$PEER_URL"
service null '"source_ranges":["10.0.0.0/24"],'
wait_until 10 "direct: the new source range replaced the old one" lab_allowed_only 10.0.0.0/24 192.0.2.0/24
assert_eq "direct: a client inside the source ranges is answered" "peer=$LAB_CLIENT_ADDR" \
    "$(http_get "$PEER_URL" | sed 's/^node=[^ ]* //')"

# externalTrafficPolicy Local, direct: only the nodes with a ready endpoint (n1, n3) get traffic.
must edgelb_api PUT /api/v1/clusters/lab/services/default/web "{\"uid\":\"u-web\",\"external_traffic_policy\":\"Local\",
 \"local_nodes\":[\"n1\",\"n3\"],\"ports\":[{\"name\":\"http\",\"protocol\":\"TCP\",\"port\":80,\"node_port\":$LAB_NODEPORT}]}" >/dev/null
two_local_real_servers() { [ "$(in_ns appliance ipvsadm -Ln -t "$VIP:80" | grep -Ec '10\.1\.0\.1[13]:80 +Route +1 ')" = 2 ] && ! in_ns appliance ipvsadm -Ln -t "$VIP:80" | grep -Eq '10\.1\.0\.12:80 +Route +[1-9]'; }
wait_until 10 "Local, direct: only n1 and n3 take traffic" two_local_real_servers
_nodes=
for _i in 1 2 3 4 5 6; do
    _body=$(http_get "$PEER_URL") || fail "Local: request $_i failed"
    echo "Local: $_body"
    assert_eq "Local, direct: the client's address, end to end" "peer=$LAB_CLIENT_ADDR" "${_body#* }"
    _nodes="$_nodes ${_body%% *}"
done
assert_eq "Local, direct: the answers came from n1 and n3 only" "node=n1 node=n3" \
    "$(echo "$_nodes" | tr ' ' '\n' | sed '/^$/d' | sort -u | tr '\n' ' ' | sed 's/ $//')"

service '"tunnel"'
wait_until 10 "tunnel (the Service's own): IPVS tunnels the VIP to the three nodes' port 80" three_real_servers Tunnel 80
lab_bench tunnel-programmed
assert_eq "tunnel: every node sees the client's own address" "peer=$LAB_CLIENT_ADDR" "$(peers tunnel)"
assert_eq "tunnel: the Service's status shows what IPVS holds, methods included" "$(ipvs_flat)" \
    "$(api_flat "$(edgelb_api GET /api/v1/clusters/lab/services/default/web/status)")"
no_reply_through_appliance tunnel
assert_eq "tunnel, UDP: the node sees the client's own address" "peer=$LAB_CLIENT_ADDR" "$(udp_peer)"
# tunnel_mtu_cases URL PEER VIP MTU: full-sized segments through the tunnel (an 8 KB request;
# 1,500-byte packets do not fit with the tunnel's 20 or 40 bytes), in three cases.
head -c 8000 /dev/zero | tr '\0' x >/tmp/big-body
big_request() { in_ns client curl -sS --max-time "$1" --data-binary @/tmp/big-body "$2" | sed 's/^node=[^ ]* //'; }
learnt_mtu() { "$IP" -n client route get "$1" | grep -o 'mtu [0-9]*'; }
tunnel_mtu_cases() {
    # 1. A client behind a filter that drops ICMP never hears that they are too large: they are
    # lost (a path-MTU black hole).
    must in_ns client nft -f - <<'NFT'
table inet icmp_filter {
    chain input {
        type filter hook input priority filter; policy accept;
        icmp type destination-unreachable drop
        icmpv6 type packet-too-big drop
    }
}
NFT
    assert_fails "tunnel to $3, ICMP filtered: full-sized segments are lost" \
        in_ns client curl -sS --max-time 5 --data-binary @/tmp/big-body "$1"
    # 2. The nodes clamp the MSS they announce in their SYN-ACKs for the VIPs (the rules of
    # docs/operations.md): the client's segments fit the tunnel without any ICMP.
    for _n in $LAB_NODES; do
        must in_ns "$_n" nft -f - <<NFT
table inet mss_clamp {
    chain output {
        type filter hook output priority mangle; policy accept;
        tcp flags & (syn | ack) == syn | ack ct original ip daddr $VIP tcp option maxseg size set 1440
        tcp flags & (syn | ack) == syn | ack ct original ip6 daddr $VIP6 tcp option maxseg size set 1400
    }
}
NFT
    done
    assert_eq "tunnel to $3, ICMP filtered, the nodes clamp the MSS: full-sized requests get through" \
        "$2" "$(big_request 10 "$1")"
    assert_eq "tunnel to $3, the nodes clamp the MSS: the client never learnt a smaller MTU" "" "$(learnt_mtu "$3")"
    for _n in $LAB_NODES; do
        must in_ns "$_n" nft delete table inet mss_clamp
    done
    must in_ns client nft delete table inet icmp_filter
    # 3. Neither: IPVS answers "fragmentation needed" ("packet too big") and the client's path-MTU
    # discovery sends smaller segments.
    assert_eq "tunnel to $3: a request of full-sized segments gets through (path-MTU discovery)" \
        "$2" "$(big_request 10 "$1")"
    assert_eq "tunnel to $3: the client learnt the tunnel's MTU from the appliance" "mtu $4" "$(learnt_mtu "$3")"
}
tunnel_mtu_cases "$PEER_URL" "peer=$LAB_CLIENT_ADDR" "$VIP" 1480

service '"fullnat"'
wait_until 10 "fullnat: IPVS masquerades to the three NodePorts" three_real_servers Masq "$LAB_NODEPORT"
assert_eq "fullnat after tunnel: the Service still answers, the nodes see the appliance" \
    "peer=$LAB_BACK_ADDR" "$(peers fullnat)"
_out=$(packets OUT)
peers fullnat >/dev/null
assert_ok "fullnat: the replies come back through the appliance" [ "$(packets OUT)" -gt "$_out" ]

service '"direct"'
wait_until 10 "and back to direct" three_real_servers Route 80
assert_eq "direct after fullnat: the Service answers at once with the client's address" \
    "peer=$LAB_CLIENT_ADDR" "$(peers "direct again")"

# IPv6, direct then tunnel.
must edgelb_api POST /api/v1/pools '{"name":"v6","ranges":["fd00::100/128"],"scheduler":"rr","forwarding":"direct"}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/nodes '{"nodes":[{"name":"n1","addresses":["10.1.0.11","fd01::11"]},
 {"name":"n2","addresses":["10.1.0.12","fd01::12"]},{"name":"n3","addresses":["10.1.0.13","fd01::13"]}]}' >/dev/null
service6() {
    must edgelb_api PUT /api/v1/clusters/lab/services/default/web6 "{\"uid\":\"u-web6\",\"ip_families\":[\"IPv6\"],
     \"forwarding\":$1,\"ports\":[{\"protocol\":\"TCP\",\"port\":80,\"node_port\":$LAB_NODEPORT}]}" >/dev/null
}
three_v6_real_servers() {
    [ "$(in_ns appliance ipvsadm -Ln -t "[$VIP6]:80" | grep -Ec "\[fd01::1[1-3]\]:80 +$1 ")" = 3 ]
}
peers6() { lab_peers "http://[$VIP6]/cgi-bin/peer" "$1" 6; }
service6 null
wait_until 10 "IPv6, direct: IPVS routes the IPv6 VIP to the nodes' port 80" three_v6_real_servers Route
assert_eq "IPv6, direct: every node sees the client's own address" "peer=fd00::2" "$(peers6 "IPv6 direct")"
service6 '"tunnel"'
wait_until 10 "IPv6, tunnel: IPVS tunnels the IPv6 VIP to the nodes' port 80" three_v6_real_servers Tunnel
assert_eq "IPv6, tunnel: every node sees the client's own address" "peer=fd00::2" "$(peers6 "IPv6 tunnel")"
# IPv6 in IPv6 costs 40 bytes: 1,460.
tunnel_mtu_cases "http://[$VIP6]/cgi-bin/peer" "peer=fd00::2" "$VIP6" 1460

edgelb_stop
[ "$LAB_FAILURES" -eq 0 ] || {
    lab_dump
    dsr_dump
    cat "$EDGELB_LOG"
}
lab_done
