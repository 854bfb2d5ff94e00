# shellcheck shell=sh
# lab/scenarios/ipvs-smoke.sh: proves the lab itself works. With ipvsadm alone (no edgelb), a VIP
# with round robin over three masquerade real servers on the nodes' NodePort answers from every
# node in turn through full NAT, and without the masquerade rule it does not answer at all
# (so the topology really exercises full NAT).

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

lab_topology
lab_nodes_serve "$LAB_NODEPORT"
lab_add_vip "$LAB_VIP"
lab_appliance_forwarding

vip="$LAB_VIP:80"
must in_ns appliance ipvsadm -A -t "$vip" -s rr
for n in $LAB_NODES; do
    must in_ns appliance ipvsadm -a -t "$vip" -r "$(node_addr "$n"):$LAB_NODEPORT" -m
done
in_ns appliance ipvsadm -Ln

# Without source NAT the nodes answer towards their own default route, and the client hears nothing.
LAB_HTTP_TIMEOUT=1 assert_fails "no answer without the masquerade rule" http_get "http://$vip/"

lab_masquerade_nodes
lab_bench ipvs-configured

answers=
for i in 1 2 3 4 5 6 7 8 9; do
    body=$(http_get "http://$vip/") || fail "request $i to $vip failed"
    echo "request $i: $body"
    answers="$answers $body"
done
lab_bench requests-done

for n in $LAB_NODES; do
    count=0
    for a in $answers; do
        [ "$a" = "node=$n" ] && count=$((count + 1))
    done
    assert_eq "round robin sent 3 of 9 requests to $n" 3 "$count"
done

[ "$LAB_FAILURES" -eq 0 ] || lab_dump
lab_done
