# shellcheck shell=sh disable=SC2317 # check functions run through wait_until and assert_ok
# lab/scenarios/edgelb-health.sh: health checks drain, never drop. Three nodes serve a TCP
# NodePort (socat: each connection gets "node=<name>" and then an echo of what it sends, so a
# connection can stay open). A long-lived client connection is opened through the VIP; the
# server of the node it landed on is killed (its forked child keeps serving that connection):
# within fall x interval that real server's weight is 0 in `ipvsadm -Ln`, new requests stop
# reaching the node with zero failures after detection, the long-lived connection still
# echoes; the status endpoint and /metrics say the backend is down. The server started again
# brings the weight back to 1, and the appliance's own history (GET /api/v1/history/...) has
# recorded both transitions and the real traffic from IPVS's counters. A `Local` Service: the
# node whose healthCheckNodePort /healthz answers 503 gets weight 0 and no traffic. A node
# turning NotReady is drained (weight 0), not removed. Every metric the Grafana dashboard
# (deploy/grafana) queries is exported. Needs `--ship
# target/release/edgelb --ship /usr/bin/curl --ship /usr/bin/jq --ship /usr/bin/socat --ship
# deploy/grafana/edgelb-dashboard.json:/lab/grafana-dashboard.json`.

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

command -v socat >/dev/null || die "no socat in the VM: --ship /usr/bin/socat"
command -v jq >/dev/null || die "no jq in the VM: --ship /usr/bin/jq"

VIP=$LAB_VIP
VIP_LOCAL=10.0.0.101
INTERVAL=0.5
FALL=2
STATUS=/api/v1/clusters/lab/services/default/web/status

# serve NODE: the NodePort 30080 server of NODE, in the background; its pid in /tmp/server.NODE.pid.
serve() {
    # Not through in_ns: `ip netns exec` execs socat, so $! is socat's own pid.
    "$IP" netns exec "$1" socat TCP-LISTEN:30080,fork,reuseaddr SYSTEM:"echo node=$1; cat" &
    echo $! >"/tmp/server.$1.pid"
}

# ask [VIP:PORT]: one new connection through the VIP; prints the node that answered.
ask() {
    echo bye | in_ns client timeout 3 socat -T 2 - TCP:"${1:-$VIP:80}" 2>/dev/null | head -n 1
}

# weight_of ADDR:PORT [VIP:PORT]: the real server's weight in IPVS.
weight_of() {
    in_ns appliance ipvsadm -Ln -t "${2:-$VIP:80}" | awk -v rs="$1" '$2 == rs {print $4}'
}
weight_is() { [ "$(weight_of "$1" "${3:-$VIP:80}")" = "$2" ]; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

lab_topology
for n in $LAB_NODES; do
    serve "$n"
    # kube-proxy's healthCheckNodePort: n3 has no local endpoint of the Local Service.
    code="200 OK"
    [ "$n" = n3 ] && code="503 Service Unavailable"
    printf 'HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$code" >"/tmp/healthz.$n"
    # The answer follows the request line, so socat never writes the request to an exited child.
    in_ns "$n" socat TCP-LISTEN:32000,fork,reuseaddr SYSTEM:"read -r _; cat /tmp/healthz.$n" &
done
sleep 0.5

edgelb_start --dataplane ipvs --interface front --resync-seconds 30 \
    --health-interval-seconds "$INTERVAL" --health-timeout-seconds 0.4 --health-fall "$FALL" \
    --health-rise 2 --drain-timeout-seconds 180

must edgelb_api POST /api/v1/pools '{"name":"lab","ranges":["10.0.0.100-10.0.0.101"],"scheduler":"rr"}' >/dev/null
must edgelb_api POST /api/v1/clusters '{"name":"lab"}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/nodes \
    '{"nodes":[{"name":"n1","addresses":["10.1.0.11"]},{"name":"n2","addresses":["10.1.0.12"]},{"name":"n3","addresses":["10.1.0.13"]}]}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/services/default/web \
    '{"uid":"u-web","requested_ips":["10.0.0.100"],"ports":[{"protocol":"TCP","port":80,"node_port":30080}]}' >/dev/null
must edgelb_api PUT /api/v1/clusters/lab/services/default/local \
    '{"uid":"u-local","requested_ips":["10.0.0.101"],"external_traffic_policy":"Local","health_check_node_port":32000,
      "ports":[{"protocol":"TCP","port":80,"node_port":30080}]}' >/dev/null

for n in $LAB_NODES; do
    wait_until 10 "$(node_addr "$n"):30080 is a real server at weight 1" weight_is "$(node_addr "$n"):30080" 1
done
in_ns appliance ipvsadm -Ln

# The appliance's own history samples every 10 s, from IPVS's counters and the published health:
# once it has seen the three real servers up, it records what follows.
HISTORY="/api/v1/history/services/lab/default/web?range=1h"
transitions_of() {
    edgelb_api GET "$HISTORY" | jq -r --arg ip "$1" \
        '.ports[0].real_servers[] | select(.ip == $ip) | .transitions[].to' | tr '\n' ' '
}
history_has_real_servers() {
    [ "$(edgelb_api GET "$HISTORY" | jq '.ports[0].real_servers | length')" = 3 ]
}
wait_until 15 "the history has sampled the three real servers" history_has_real_servers

# --- a node's server dies while a long-lived connection to it is open ------------------------
mkfifo /tmp/ll_in
"$IP" netns exec client socat -T 60 - TCP:"$VIP:80" </tmp/ll_in >/tmp/ll_out 2>&1 &
LL_PID=$!
exec 3>/tmp/ll_in
echo ping1 >&3
wait_until 5 "the long-lived connection is answered" grep -q ping1 /tmp/ll_out
victim=$(sed -n 's/^node=//p' /tmp/ll_out | head -n 1)
[ -n "$victim" ] || die "the long-lived connection did not say its node: $(cat /tmp/ll_out)"
victim_rs="$(node_addr "$victim"):30080"
log "the long-lived connection is on $victim ($victim_rs)"

victim_pid=$(cat "/tmp/server.$victim.pid")
t0=$(uptime_s)
must kill -9 "$victim_pid"
# Wait without the 0.2 s granularity of wait_until, to measure the detection time.
i=0
until weight_is "$victim_rs" 0; do
    i=$((i + 1))
    [ "$i" -lt 200 ] || break
    sleep 0.05
done
t1=$(uptime_s)
detect=$(echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}')
log "server of $victim killed -> weight 0 in IPVS after $detect s (fall x interval = $FALL x $INTERVAL s)"
in_ns appliance ipvsadm -Ln
assert_eq "the dead node's real server is drained (weight 0), not removed" 0 "$(weight_of "$victim_rs")"
# fall x interval, plus one jittered interval for the probe phase and 1 s for the VM (TCG).
assert_ok "drained within fall x interval (+1.5 s of slack): $detect s" \
    awk -v d="$detect" 'BEGIN { exit !(d <= 2.5) }'

failed=0
answers=
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
    a=$(ask) || true
    [ -n "$a" ] || failed=$((failed + 1))
    answers="$answers $a"
done
echo "answers after detection:$answers"
assert_eq "zero failed new requests after detection" 0 "$failed"
# shellcheck disable=SC2086
assert_eq "no new request reached $victim" 0 "$(count_of "node=$victim" $answers)"

echo ping2 >&3
wait_until 5 "the long-lived connection opened before still works" grep -q ping2 /tmp/ll_out

status=$(edgelb_api GET "$STATUS")
health=$(echo "$status" | jq -r --arg ip "$(node_addr "$victim")" \
    '.virtual_services[].real_servers[] | select(.ip == $ip) | .health.state')
assert_eq "the status endpoint says $victim is down" down "$health"
last=$(echo "$status" | jq -r --arg ip "$(node_addr "$victim")" \
    '.virtual_services[].real_servers[] | select(.ip == $ip) | .health.last_result')
assert_contains "the status endpoint gives the last probe's result" "$last" "connect"
metrics=$(edgelb_api GET /metrics)
assert_contains "/metrics says the backend is down" "$metrics" \
    "edgelb_backend_up{vip=\"$VIP\",port=\"80\",protocol=\"TCP\",backend=\"$victim_rs\"} 0"
assert_contains "/metrics has the probe latency" "$metrics" "edgelb_backend_probe_latency_seconds{"
# Every metric the Grafana dashboard in deploy/grafana queries is one this appliance exports, with
# IPVS, health checks and the API all in use: its families (a counter's samples end in _total, a
# histogram's in _bucket, _sum and _count) and the samples themselves.
[ -f "$LAB_DASHBOARD" ] || die "no dashboard: --ship deploy/grafana/edgelb-dashboard.json:$LAB_DASHBOARD"
exported=$(
    echo "$metrics" | sed -n 's/^# TYPE \([a-z_]*\) \([a-z]*\)$/\1 \2/p' | while read -r _name _type; do
        echo "$_name"
        case $_type in
            counter) echo "${_name%_total}_total" ;;
            histogram) printf '%s_bucket\n%s_sum\n%s_count\n' "$_name" "$_name" "$_name" ;;
        esac
    done
    echo "$metrics" | grep -v '^#' | sed 's/[{ ].*//'
)
is_exported() { echo "$exported" | grep -qx "$1"; }
_used=$(grep -o 'edgelb_[a-z_]*' "$LAB_DASHBOARD" | sort -u)
assert_ok "the dashboard queries edgelb metrics" [ "$(echo "$_used" | wc -l)" -ge 10 ]
for _m in $_used; do
    assert_ok "the dashboard's $_m is exported" is_exported "$_m"
done

history_says() { transitions_of "$(node_addr "$victim")" | grep -q "$1"; }
wait_until 15 "the history recorded $victim going down" history_says down

# --- it comes back ---------------------------------------------------------------------------
serve "$victim"
wait_until 10 "$victim is back at weight 1 once its server answers again" weight_is "$victim_rs" 1
wait_until 15 "the history recorded $victim coming back after going down" history_says "down up"
history=$(edgelb_api GET "$HISTORY")
positive() { echo "$history" | jq "[$1[] | select(. != null and . > 0)] | length"; }
assert_ok "the history has the port's new connections (real traffic, from IPVS's counters)" \
    [ "$(positive .ports[0].traffic.connections_per_second)" -ge 1 ]
assert_ok "and its bytes in" [ "$(positive .ports[0].traffic.bytes_in_per_second)" -ge 1 ]
assert_eq "and a series for each real server" 3 "$(echo "$history" | jq '.ports[0].real_servers | length')"
answers=
for i in 1 2 3 4 5 6; do
    answers="$answers $(ask)"
done
echo "answers after recovery:$answers"
# shellcheck disable=SC2086
assert_ok "$victim gets new requests again" [ "$(count_of "node=$victim" $answers)" -ge 1 ]
exec 3>&-
kill "$LL_PID" 2>/dev/null

# --- externalTrafficPolicy: Local: /healthz 503 means no traffic -----------------------------
wait_until 10 "the Local Service's n3 (healthz 503) has weight 0" weight_is 10.1.0.13:30080 0 "$VIP_LOCAL:80"
in_ns appliance ipvsadm -Ln -t "$VIP_LOCAL:80"
assert_eq "n1 serves the Local Service" 1 "$(weight_of 10.1.0.11:30080 "$VIP_LOCAL:80")"
assert_eq "n2 serves the Local Service" 1 "$(weight_of 10.1.0.12:30080 "$VIP_LOCAL:80")"
failed=0
answers=
for i in 1 2 3 4 5 6; do
    a=$(ask "$VIP_LOCAL:80") || true
    [ -n "$a" ] || failed=$((failed + 1))
    answers="$answers $a"
done
echo "Local answers:$answers"
assert_eq "every request to the Local Service is answered" 0 "$failed"
# shellcheck disable=SC2086
assert_eq "no request to the Local Service reached n3" 0 "$(count_of node=n3 $answers)"
# A different target (healthz, not the NodePort): n3 still serves the Cluster Service.
assert_eq "n3 still serves the Cluster Service" 1 "$(weight_of 10.1.0.13:30080)"

# --- a node turning NotReady is drained the same way, not cut ---------------------------------
must edgelb_api PUT /api/v1/clusters/lab/nodes \
    '{"nodes":[{"name":"n1","addresses":["10.1.0.11"]},{"name":"n2","addresses":["10.1.0.12"],"ready":false},{"name":"n3","addresses":["10.1.0.13"]}]}' >/dev/null
wait_until 5 "NotReady n2 is drained (weight 0), not removed" weight_is 10.1.0.12:30080 0

[ "$LAB_FAILURES" -eq 0 ] || {
    lab_dump
    cat "$EDGELB_LOG"
}
edgelb_stop
lab_done
