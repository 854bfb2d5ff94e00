# shellcheck shell=sh disable=SC2317 # check functions run through wait_until
# lab/scenarios/edgelb-plainnat.sh: `nat = "plain"` keeps the client's address. The nodes' route
# back to the clients' network goes through the appliance (their default route still does not):
# the appliance started with `--nat plain` forwards the VIP with no source NAT, its nftables table
# has no full-NAT entries, and the node's HTTP server sees the client's own address. Restarted
# with the default (full NAT), the same nodes see the appliance's address instead. Needs
# `--ship target/release/edgelb --ship /usr/bin/curl`.

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

VIP=$LAB_VIP
# Plain log lines, so the checks below can read their fields.
export NO_COLOR=1
PEER_URL="http://$VIP/cgi-bin/peer"

three_real_servers() { [ "$(in_ns appliance ipvsadm -Ln -t "$VIP:80" | grep -c ' Masq ')" = 3 ]; }
# fullnat_entries: the elements of the appliance's full-NAT set (node . tcp . nodePort).
# nft prints the protocol as a number here: tcp is 6.
fullnat_entries() { in_ns appliance nft list set inet edgelb fullnat_v4 | grep -Ec '10\.1\.0\.1[1-3] \. (6|tcp) \. 30080'; }
fullnat_holds_the_nodes() { [ "$(fullnat_entries)" = 3 ]; }
table_exists() { in_ns appliance nft list table inet edgelb; }

# peers WHAT: three requests to the VIP (lab_peers).
peers() { lab_peers "$PEER_URL" "$1" 3; }

lab_topology
lab_nodes_route_via_appliance
lab_nodes_serve_peer 30080

edgelb_start --dataplane ipvs --interface front --resync-seconds 2 --nat plain
# The line is logged just after the "listening on" that edgelb_start waits for: wait for it too.
wait_until 5 "the appliance says it runs plain NAT" grep -q 'forwarding with IPVS.* nat="plain"' "$EDGELB_LOG"
must edgelb_api POST /api/v1/pools '{"name":"lab","ranges":["10.0.0.100/32"],"scheduler":"rr"}' >/dev/null
must edgelb_api POST /api/v1/clusters '{"name":"lab"}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/nodes '{"nodes":[{"name":"n1","addresses":["10.1.0.11"]},
 {"name":"n2","addresses":["10.1.0.12"]},{"name":"n3","addresses":["10.1.0.13"]}]}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/services/default/web \
    '{"uid":"u-web","ports":[{"name":"http","protocol":"TCP","port":80,"node_port":30080}]}' >/dev/null
wait_until 10 "IPVS forwards the VIP to the three nodes" three_real_servers
wait_until 10 "the appliance's nftables table exists" table_exists
lab_bench plain-programmed

assert_eq "plain NAT: no full-NAT entry for the nodes" 0 "$(fullnat_entries)"
assert_eq "plain NAT: every node sees the client's own address" "peer=$LAB_CLIENT_ADDR" "$(peers "plain NAT")"

# The default, full NAT, on the same nodes and routes: the nodes see the appliance instead.
vs_conns() { sleep 2.5; in_ns appliance ipvsadm -Ln --stats -t "$VIP:80" | awk '$1 == "TCP" {print $3}'; }
conns_before=$(vs_conns)
edgelb_stop
edgelb_start --dataplane ipvs --interface front --resync-seconds 2
wait_until 5 "the appliance says it runs full NAT by default" grep -q 'forwarding with IPVS.* nat="full"' "$EDGELB_LOG"
wait_until 10 "full NAT: the full-NAT set holds the three nodes" fullnat_holds_the_nodes
lab_bench full-programmed
assert_eq "full NAT: every node sees the appliance's address" "peer=$LAB_BACK_ADDR" "$(peers "full NAT")"
assert_ok "switching NAT left the IPVS service in place (its counters kept)" \
    [ "$(vs_conns)" -ge $((conns_before + 3)) ]

edgelb_stop
[ "$LAB_FAILURES" -eq 0 ] || {
    lab_dump
    cat "$EDGELB_LOG"
}
lab_done
