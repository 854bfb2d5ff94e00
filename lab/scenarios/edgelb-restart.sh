# shellcheck shell=sh disable=SC2317 # check functions run through wait_until and assert_ok
# lab/scenarios/edgelb-restart.sh: forwarding outlives the appliance. While a client sends
# requests in a loop, the appliance stops, runs control-plane-only to delete a Service, and
# comes back with IPVS: not one request fails, the Service deleted while it was down is gone from
# IPVS after it returns, and an ipvsadm-made foreign service is untouched throughout; finally
# `edgelb dataplane flush` removes what edgelb owns and only that. First, `--dataplane ipvs`
# without CAP_NET_ADMIN (in a kernel that has IPVS) refuses to start and says what to grant.
# Needs `--ship target/release/edgelb --ship /usr/bin/curl --ship /usr/bin/jq
# --ship /usr/bin/setpriv`.

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

VIP=$LAB_VIP
OTHER=10.0.0.101
lab_topology
lab_nodes_serve 30080
# The appliance claims the VIPs on `front`, owns the full NAT and sets the sysctls itself.

# An explicit ipvs data plane without the capability: a clear refusal, not a silent control plane.
command -v setpriv >/dev/null || die "no setpriv in the VM: --ship /usr/bin/setpriv"
nocap=$(in_ns appliance setpriv --bounding-set -net_admin --inh-caps -net_admin \
    timeout 30 edgelb serve --dataplane ipvs --data-dir /tmp/nocap --listen 127.0.0.1:0 2>&1)
nocap_exit=$?
echo "$nocap" | tail -n 3
refused() { [ "$nocap_exit" -ne 0 ] && [ "$nocap_exit" -ne 124 ]; }
assert_ok "without CAP_NET_ADMIN, --dataplane ipvs does not start (exit $nocap_exit)" refused
assert_contains "and says which capability to grant" "$nocap" "lacks CAP_NET_ADMIN"

must in_ns appliance ipvsadm -A -t 10.0.0.200:80 -s wlc
must in_ns appliance ipvsadm -a -t 10.0.0.200:80 -r 10.1.0.11:30080 -m -w 3
foreign_before=$(ipvs_flat | grep ' 10.0.0.200:')

vip_has() { in_ns appliance ipvsadm -Ln | grep -q " $1:80 "; }
vip_gone() { ! vip_has "$1"; }

edgelb_start --dataplane ipvs --interface front --resync-seconds 2
must edgelb_api POST /api/v1/pools '{"name":"a","ranges":["10.0.0.100/32"],"scheduler":"rr"}' >/dev/null
must edgelb_api POST /api/v1/pools '{"name":"b","ranges":["10.0.0.101/32"],"scheduler":"rr"}' >/dev/null
must edgelb_api POST /api/v1/clusters '{"name":"lab"}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/nodes \
    '{"nodes":[{"name":"n1","addresses":["10.1.0.11"]},{"name":"n2","addresses":["10.1.0.12"]},{"name":"n3","addresses":["10.1.0.13"]}]}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/services/default/web \
    '{"uid":"u-web","pool":"a","ports":[{"protocol":"TCP","port":80,"node_port":30080}]}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/services/default/gone \
    '{"uid":"u-gone","pool":"b","ports":[{"protocol":"TCP","port":80,"node_port":30080}]}' >/dev/null
wait_until 10 "web is programmed" vip_has "$VIP"
wait_until 10 "gone is programmed" vip_has "$OTHER"
ready=$(in_ns appliance curl -sS --cacert "$EDGELB_DATA/tls/cert.pem" "$EDGELB_URL/readyz")
assert_contains "/readyz names the ipvs data plane" "$ready" "ready (dataplane: ipvs)"
in_ns appliance ipvsadm -Ln

rm -f /tmp/stop-loop /tmp/loop.result
client_loop() {
    _ok=0
    _bad=0
    while [ ! -e /tmp/stop-loop ]; do
        if http_get "http://$VIP/" >/dev/null; then
            _ok=$((_ok + 1))
        else
            _bad=$((_bad + 1))
            echo "request failed at uptime $(cut -d' ' -f1 /proc/uptime)"
        fi
    done
    echo "$_ok $_bad" >/tmp/loop.result
}
client_loop &
loop=$!
sleep 1
lab_bench loop-started

edgelb_stop
sleep 1
# Control plane only, on the same data: the Service is deleted while nothing programs IPVS.
edgelb_start --dataplane none
assert_contains "/api/v1/info says none" "$(edgelb_api GET /api/v1/info)" '"dataplane":"none"'
assert_contains "/readyz says none" \
    "$(in_ns appliance curl -sS --cacert "$EDGELB_DATA/tls/cert.pem" "$EDGELB_URL/readyz")" "dataplane: none"
must edgelb_api DELETE /api/v1/clusters/lab/services/default/gone >/dev/null
sleep 1
assert_ok "IPVS still forwards the deleted Service while no data plane runs" vip_has "$OTHER"
edgelb_stop
sleep 1
lab_bench restart
edgelb_start --dataplane ipvs --interface front --resync-seconds 2
wait_until 10 "the Service deleted while the appliance was down is gone from IPVS" vip_gone "$OTHER"
assert_ok "web is still there" vip_has "$VIP"
sleep 2

touch /tmp/stop-loop
wait "$loop"
read -r ok bad </tmp/loop.result
log "client loop: $ok requests answered, $bad failed"
assert_eq "no request failed across the restarts" 0 "$bad"
assert_ok "the client loop really ran ($ok requests)" [ "$ok" -ge 10 ]
assert_eq "the foreign service is untouched" "$foreign_before" "$(ipvs_flat | grep ' 10.0.0.200:')"

edgelb_stop
must in_ns appliance edgelb dataplane flush --data-dir "$EDGELB_DATA" --interface front
assert_ok "flush removed edgelb's service" vip_gone "$VIP"
assert_fails "flush released the VIP" sh -c "$IP -n appliance -br addr show dev front | grep -q '$VIP/32'"
assert_fails "flush deleted edgelb's nftables table" in_ns appliance nft list table inet edgelb
assert_eq "flush left the foreign service alone" "$foreign_before" "$(ipvs_flat | grep ' 10.0.0.200:')"

[ "$LAB_FAILURES" -eq 0 ] || {
    lab_dump
    cat /tmp/edgelb.*.log
}
lab_done
