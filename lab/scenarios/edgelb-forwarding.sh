# shellcheck shell=sh disable=SC2317 # check functions run through wait_until and assert_ok
# lab/scenarios/edgelb-forwarding.sh: the appliance programs IPVS from its REST API. A pool and a
# Service with two TCP ports and a UDP port on three nodes appear in `ipvsadm -Ln` exactly as the
# status endpoint reports them; a real server and a virtual service deleted by hand come back
# with the next resync; HTTP from the client to the VIP reaches all three nodes under rr;
# a node removed from the node list gets no more traffic; sessionAffinity ClientIP keeps the
# client on one node (an in-place edit); the UDP port answers; an ipvsadm-made foreign service
# is untouched throughout. Needs `--ship target/release/edgelb --ship /usr/bin/curl
# --ship /usr/bin/jq --ship /usr/bin/socat`.

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

VIP=$LAB_VIP
STATUS=/api/v1/clusters/lab/services/default/web/status

vip_services_are() { [ "$(in_ns appliance ipvsadm -Ln | grep -c " $VIP:")" = "$1" ]; }
status_matches_kernel() { [ "$(api_flat "$(edgelb_api GET "$STATUS")")" = "$(ipvs_flat | grep " $VIP:")" ]; }
no_n3() { ! in_ns appliance ipvsadm -Ln | grep -q 10.1.0.13; }
persistent() { in_ns appliance ipvsadm -Ln | grep -q "persistent $1"; }
# rs_conns ADDR:PORT: connections IPVS scheduled to that real server of VIP:80. The kernel
# folds its per-CPU counters into what it reports every 2 s (the rate estimator), so wait first.
rs_conns() { sleep 2.5; in_ns appliance ipvsadm -Ln --stats -t "$VIP:80" | awk -v rs="$1" '$2 == rs {print $3}'; }
vs_conns() { sleep 2.5; in_ns appliance ipvsadm -Ln --stats -t "$VIP:80" | awk '$1 == "TCP" {print $3}'; }
lab_topology
lab_nodes_serve 30080
lab_nodes_serve 30081
# The reply waits for the datagram to be read: a child that answered and exited before socat
# handed it the datagram made socat die of EPIPE without sending the answer (about 2 in 100).
for n in $LAB_NODES; do
    in_ns "$n" socat UDP-LISTEN:30053,fork,reuseaddr SYSTEM:"read -r _; echo node=$n" &
done
# No VIP and no NAT from the lab: the appliance claims the VIP on `front` and owns the full NAT.

# Someone else's service, outside every pool: edgelb must never touch it.
must in_ns appliance ipvsadm -A -t 10.0.0.200:80 -s wlc
must in_ns appliance ipvsadm -a -t 10.0.0.200:80 -r 10.1.0.11:30080 -m -w 3
foreign_before=$(ipvs_flat | grep ' 10.0.0.200:')

edgelb_start --dataplane ipvs --interface front --resync-seconds 2
info=$(edgelb_api GET /api/v1/info) || die "info: $info"
assert_contains "the API says the data plane is ipvs" "$info" '"dataplane":"ipvs"'

must edgelb_api POST /api/v1/pools '{"name":"lab","ranges":["10.0.0.100/32"],"scheduler":"rr"}' >/dev/null
must edgelb_api POST /api/v1/clusters '{"name":"lab"}' >/dev/null
nodes3='{"nodes":[{"name":"n1","addresses":["10.1.0.11"]},{"name":"n2","addresses":["10.1.0.12"]},{"name":"n3","addresses":["10.1.0.13"]}]}'
must edgelb_api PUT /api/v1/clusters/lab/nodes "$nodes3" >/dev/null
svc='{"uid":"u-web","ports":[{"name":"http","protocol":"TCP","port":80,"node_port":30080},
 {"name":"alt","protocol":"TCP","port":8080,"node_port":30081},{"name":"dns","protocol":"UDP","port":5353,"node_port":30053}]'
t0=$(cut -d' ' -f1 /proc/uptime)
must edgelb_api PUT /api/v1/clusters/lab/services/default/web "$svc}" >/dev/null
wait_until 10 "IPVS has the three virtual services" vip_services_are 3
t1=$(cut -d' ' -f1 /proc/uptime)
log "API PUT to IPVS programmed: $(echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}') s (uptime $t0 -> $t1)"
lab_bench programmed

expected="TCP $VIP:80 rr
TCP $VIP:80 rr -> 10.1.0.11:30080 Masq 1
TCP $VIP:80 rr -> 10.1.0.12:30080 Masq 1
TCP $VIP:80 rr -> 10.1.0.13:30080 Masq 1
TCP $VIP:8080 rr
TCP $VIP:8080 rr -> 10.1.0.11:30081 Masq 1
TCP $VIP:8080 rr -> 10.1.0.12:30081 Masq 1
TCP $VIP:8080 rr -> 10.1.0.13:30081 Masq 1
UDP $VIP:5353 rr
UDP $VIP:5353 rr -> 10.1.0.11:30053 Masq 1
UDP $VIP:5353 rr -> 10.1.0.12:30053 Masq 1
UDP $VIP:5353 rr -> 10.1.0.13:30053 Masq 1"
expected=$(echo "$expected" | sort)
kernel=$(ipvs_flat | grep " $VIP:")
in_ns appliance ipvsadm -Ln
assert_eq "ipvsadm -Ln shows the Service's ports on the three nodes" "$expected" "$kernel"
# The status document is published after the pass; give it the resync period at most.
wait_until 5 "the status endpoint reports exactly what ipvsadm shows" status_matches_kernel ||
    api_flat "$(edgelb_api GET "$STATUS")"

# Drift: someone deletes a real server and a whole virtual service by hand. The periodic resync
# (every 2 s here) puts back exactly what the API says, and nothing else.
must in_ns appliance ipvsadm -d -t "$VIP:8080" -r 10.1.0.12:30081
must in_ns appliance ipvsadm -D -u "$VIP:5353"
kernel_is_expected() { [ "$(ipvs_flat | grep " $VIP:")" = "$expected" ]; }
wait_until 10 "the resync repaired the hand-made drift" kernel_is_expected

answers=
for i in 1 2 3 4 5 6 7 8 9; do
    body=$(http_get "http://$VIP/") || fail "request $i to $VIP:80 failed"
    answers="$answers $body"
done
echo "answers:$answers"
# shellcheck disable=SC2086
for n in $LAB_NODES; do assert_eq "rr sent 3 of 9 requests to $n" 3 "$(count_of node=$n $answers)"; done
body=$(http_get "http://$VIP:8080/") || fail "request to $VIP:8080 failed"
assert_contains "the second port answers" "$body" "node="
udp=$(in_ns client sh -c "echo ping | timeout 5 socat -T2 - UDP:$VIP:5353")
assert_contains "the UDP port answers through the VIP" "$udp" "node="

metrics=$(in_ns appliance curl -sS --cacert "$EDGELB_DATA/tls/cert.pem" "$EDGELB_URL/metrics")
assert_contains "metrics carry per-real-server IPVS counters" "$metrics" \
    "edgelb_ipvs_real_server_connections_total{vip=\"$VIP\",port=\"80\",protocol=\"TCP\",real_server=\"10.1.0.11:30080\"}"

assert_contains "the appliance claimed the VIP on front" "$("$IP" -n appliance -br addr show dev front)" "$VIP/32"
assert_ok "its nftables table holds the full NAT" in_ns appliance nft list table inet edgelb

# loadBalancerSourceRanges: a client outside the ranges is dropped, inside gets through.
# Each check waits for the appliance's table to hold the new range first, not for a fixed time.
must edgelb_api PUT /api/v1/clusters/lab/services/default/web "$svc,\"source_ranges\":[\"192.0.2.0/24\"]}" >/dev/null
wait_until 10 "the source range is in the appliance's table" lab_allowed_has 192.0.2.0/24
LAB_HTTP_TIMEOUT=2 assert_fails "a client outside the source ranges gets no answer" http_get "http://$VIP/"
must edgelb_api PUT /api/v1/clusters/lab/services/default/web "$svc,\"source_ranges\":[\"10.0.0.0/24\"]}" >/dev/null
wait_until 10 "the new source range replaced the old one" lab_allowed_only 10.0.0.0/24 192.0.2.0/24
assert_ok "a client inside the source ranges is answered" http_get "http://$VIP/"
must edgelb_api PUT /api/v1/clusters/lab/services/default/web "$svc}" >/dev/null

# A node leaves the node list: its real servers go, the others stay (no delete-and-recreate).
must edgelb_api PUT /api/v1/clusters/lab/nodes \
    '{"nodes":[{"name":"n1","addresses":["10.1.0.11"]},{"name":"n2","addresses":["10.1.0.12"]}]}' >/dev/null
n1_before=$(rs_conns 10.1.0.11:30080)
wait_until 10 "n3 is gone from IPVS" no_n3
answers=
for i in 1 2 3 4 5 6; do
    body=$(http_get "http://$VIP/") || fail "request $i after removing n3 failed"
    answers="$answers $body"
done
echo "answers:$answers"
# shellcheck disable=SC2086
assert_eq "no request reached n3" 0 "$(count_of node=n3 $answers)"
# shellcheck disable=SC2086
assert_eq "n1 and n2 share the requests" "3 3" "$(count_of node=n1 $answers) $(count_of node=n2 $answers)"
n1_after=$(rs_conns 10.1.0.11:30080)
log "n1 connections before removing n3: $n1_before, after: $n1_after"
assert_ok "n1 kept its counters: it was not deleted and re-added" [ "$n1_after" -ge $((n1_before + 3)) ]

# sessionAffinity ClientIP: persistence by an in-place edit; one client stays on one node.
must edgelb_api PUT /api/v1/clusters/lab/services/default/web \
    "$svc,\"session_affinity\":\"ClientIP\",\"session_affinity_timeout_seconds\":600}" >/dev/null
vs_before=$(vs_conns)
wait_until 10 "IPVS shows persistence" persistent 600
assert_ok "the service kept its counters: edited in place, not recreated" [ "$(vs_conns)" -ge "$vs_before" ]
assert_ok "the service has counters" [ "$vs_before" -ge 15 ]
answers=
for i in 1 2 3 4 5 6; do
    body=$(http_get "http://$VIP/") || fail "request $i with affinity failed"
    answers="$answers $body"
done
echo "answers:$answers"
first=$(echo "$answers" | awk '{print $1}')
# shellcheck disable=SC2086
assert_eq "every request with affinity went to $first" 6 "$(count_of "$first" $answers)"
wait_until 5 "the status endpoint still matches ipvsadm" status_matches_kernel

assert_eq "the foreign service is untouched" "$foreign_before" "$(ipvs_flat | grep ' 10.0.0.200:')"
lab_bench checks-done
edgelb_stop
assert_eq "stopping the appliance leaves forwarding in place" 3 "$(in_ns appliance ipvsadm -Ln | grep -c " $VIP:")"

[ "$LAB_FAILURES" -eq 0 ] || {
    lab_dump
    cat "$EDGELB_LOG"
}
lab_done
