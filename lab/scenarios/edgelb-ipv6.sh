# shellcheck shell=sh disable=SC2317 # check functions run through wait_until
# lab/scenarios/edgelb-ipv6.sh: an IPv6 VIP. The standard topology gets IPv6 addresses too (nodes
# whose default route is NOT the appliance); a Service with ip_families IPv6 gets its VIP from an
# IPv6 pool, the appliance claims it (/128, no DAD), programs IPVS with the nodes' IPv6 addresses,
# masquerades towards them in its own nftables table, and HTTP from the client over IPv6 reaches
# all three nodes. Needs `--ship target/lab-ship/edgelb --ship /usr/bin/curl --ship /usr/bin/jq`.

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

VIP6=fd00::100
lab_topology
must "$IP" -n client addr add fd00::2/64 dev eth0 nodad
must "$IP" -n client -6 route add default via fd00::1
must "$IP" -n appliance addr add fd00::1/64 dev front nodad
must "$IP" -n appliance addr add fd01::1/64 dev back nodad
for n in $LAB_NODES; do
    must "$IP" -n "$n" addr add "fd01::1${n#n}/64" dev eth0 nodad
    must "$IP" -n "$n" -6 route add default via fd01::254 dev eth0
done
lab_nodes_serve 30080

has_v6_service() { in_ns appliance ipvsadm -Ln | grep -q "\[$VIP6\]:80"; }

edgelb_start --dataplane ipvs --interface front --resync-seconds 2
must edgelb_api POST /api/v1/pools '{"name":"v6","ranges":["fd00::100/128"],"scheduler":"rr"}' >/dev/null
must edgelb_api POST /api/v1/clusters '{"name":"lab"}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/nodes \
    '{"nodes":[{"name":"n1","addresses":["10.1.0.11","fd01::11"]},{"name":"n2","addresses":["10.1.0.12","fd01::12"]},{"name":"n3","addresses":["10.1.0.13","fd01::13"]}]}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/services/default/web6 \
    '{"uid":"u-web6","ip_families":["IPv6"],"ports":[{"protocol":"TCP","port":80,"node_port":30080}]}' >/dev/null
wait_until 10 "IPVS has the IPv6 virtual service" has_v6_service
in_ns appliance ipvsadm -Ln
assert_contains "the VIP is claimed as a /128" "$("$IP" -n appliance -br addr show dev front)" "$VIP6/128"
for n in $LAB_NODES; do
    assert_contains "real server $n is its IPv6 address" "$(in_ns appliance ipvsadm -Ln)" "[fd01::1${n#n}]:30080"
done

answers=
for i in 1 2 3 4 5 6; do
    body=$(http_get "http://[$VIP6]/") || fail "request $i to [$VIP6]:80 failed"
    answers="$answers $body"
done
echo "answers:$answers"
# shellcheck disable=SC2086
for n in $LAB_NODES; do assert_eq "rr sent 2 of 6 requests to $n over IPv6" 2 "$(count_of node=$n $answers)"; done

[ "$LAB_FAILURES" -eq 0 ] || {
    lab_dump
    cat "$EDGELB_LOG"
}
lab_done
