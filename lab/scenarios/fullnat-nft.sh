# shellcheck shell=sh
# lab/scenarios/fullnat-nft.sh: proves the nftables table edgelb renders (appliance/src/dataplane/
# nft.rs) works with IPVS in a real kernel: its full-NAT rule makes the nodes' answers come back,
# its source-range filter drops a client outside a Service's loadBalancerSourceRanges before IPVS
# schedules it, and plain NAT adds no source NAT. The ruleset below is the renderer's output for
# this topology, byte for byte: appliance/tests/netns.rs (`lab_scenario_holds_the_rendered_ruleset`)
# fails when they drift, and `EDGELB_BLESS=1` there rewrites it.

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

lab_topology
lab_nodes_serve 30080
lab_nodes_serve 30082
lab_add_vip "$LAB_VIP"
lab_appliance_forwarding

# :80 full NAT, clients 10.0.0.0/24 allowed; :81 full NAT, only 192.0.2.0/24 allowed (not the
# client); :82 plain NAT to NodePort 30082.
for port in 80 81 82; do
    must in_ns appliance ipvsadm -A -t "$LAB_VIP:$port" -s rr
    node_port=30080
    [ "$port" = 82 ] && node_port=30082
    for n in $LAB_NODES; do
        must in_ns appliance ipvsadm -a -t "$LAB_VIP:$port" -r "$(node_addr "$n"):$node_port" -m
    done
done

LAB_HTTP_TIMEOUT=1 assert_fails "no answer before the table exists" http_get "http://$LAB_VIP:80/"

in_ns appliance nft -f - <<'EDGELB_NFT' || die "nft rejected the rendered table"
table inet edgelb {}
delete table inet edgelb
table inet edgelb {
	comment "managed by edgelb: changes by hand are overwritten"
	set fullnat_v4 {
		type ipv4_addr . inet_proto . inet_service
		elements = {
			10.1.0.11 . tcp . 30080,
			10.1.0.12 . tcp . 30080,
			10.1.0.13 . tcp . 30080,
		}
	}
	set fullnat_v6 {
		type ipv6_addr . inet_proto . inet_service
	}
	set restricted_v4 {
		type ipv4_addr . inet_proto . inet_service
		elements = {
			10.0.0.100 . tcp . 80,
			10.0.0.100 . tcp . 81,
		}
	}
	set restricted_v6 {
		type ipv6_addr . inet_proto . inet_service
	}
	set allowed_v4 {
		type ipv4_addr . inet_proto . inet_service . ipv4_addr
		flags interval
		elements = {
			10.0.0.100 . tcp . 80 . 10.0.0.0/24,
			10.0.0.100 . tcp . 81 . 192.0.2.0/24,
		}
	}
	set allowed_v6 {
		type ipv6_addr . inet_proto . inet_service . ipv6_addr
		flags interval
	}
	chain filter_prerouting {
		type filter hook prerouting priority -300; policy accept;
		ip daddr . meta l4proto . th dport @restricted_v4 ip daddr . meta l4proto . th dport . ip saddr != @allowed_v4 counter drop comment "edgelb:source-ranges-v4:a8054d1d"
		ip6 daddr . meta l4proto . th dport @restricted_v6 ip6 daddr . meta l4proto . th dport . ip6 saddr != @allowed_v6 counter drop comment "edgelb:source-ranges-v6:51a52b4a"
	}
	chain nat_postrouting {
		type nat hook postrouting priority 100; policy accept;
		ip daddr . meta l4proto . th dport @fullnat_v4 masquerade comment "edgelb:fullnat-v4:98cc1487"
		ip6 daddr . meta l4proto . th dport @fullnat_v6 masquerade comment "edgelb:fullnat-v6:a14b1852"
	}
}
EDGELB_NFT
lab_bench table-applied

answers=
for i in 1 2 3 4 5 6; do
    body=$(http_get "http://$LAB_VIP:80/") || fail "full NAT request $i failed"
    answers="$answers $body"
done
echo "answers:$answers"
for n in $LAB_NODES; do
    count=0
    for a in $answers; do
        [ "$a" = "node=$n" ] && count=$((count + 1))
    done
    assert_eq "full NAT: round robin sent 2 of 6 requests to $n" 2 "$count"
done

LAB_HTTP_TIMEOUT=2 assert_fails "a client outside the source ranges is dropped" http_get "http://$LAB_VIP:81/"
drops=$(in_ns appliance nft list chain inet edgelb filter_prerouting)
case "$drops" in
    *"counter packets 0 "*"counter packets 0 "*) fail "the source-range rules counted no drop: $drops" ;;
    *) echo "ok: the source-range rule counted the drop" ;;
esac
# Dropped at prerouting, the client's SYNs never reach IPVS (which takes packets at LOCAL_IN).
conns=$(in_ns appliance ipvsadm -Ln --stats -t "$LAB_VIP:81" | awk '$1 == "TCP" { print $3 }')
assert_eq "IPVS scheduled no connection from the dropped client" 0 "$conns"
LAB_HTTP_TIMEOUT=2 assert_fails "plain NAT adds no source NAT (the nodes do not route back here)" \
    http_get "http://$LAB_VIP:82/"

must in_ns appliance nft delete table inet edgelb
LAB_HTTP_TIMEOUT=1 assert_fails "no answer once the table is gone" http_get "http://$LAB_VIP:80/"

[ "$LAB_FAILURES" -eq 0 ] || lab_dump
lab_done
