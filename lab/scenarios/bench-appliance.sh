# shellcheck shell=sh
# lab/scenarios/bench-appliance.sh: the real appliance at scale, for docs/benchmarks.md. One
# `edgelb serve --dataplane ipvs` takes Services through its REST API (bench_appliance, with
# requests in flight) up to 1,000 and then 10,000 (each one TCP port on 10 nodes: 10 real
# servers); at each size it reports the time until IPVS holds them all, the appliance's VmRSS and
# VmHWM, and the latency of a one-Service change from the PUT's answer until the kernel shows it,
# plus the reconciler's own pass times from its log. Without --bench, 200 Services only: a check
# that fits the suite. Needs `--ship target/lab-ship/edgelb --ship target/lab-ship/bench_appliance
# --ship /usr/bin/curl` (see lab/README.md).
#
# Health probes are set 3600 s apart: the bench measures the API, the store, the reconciler and
# the kernel, not 100,000 TCP probes a TCG guest could not run (the health plan over every target
# is still computed on each pass). Only n1..n3 of the 10 node addresses exist; IPVS does not care.

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

command -v bench_appliance >/dev/null || die "no bench_appliance: --ship target/lab-ship/bench_appliance"
# Plain log lines, so the pass times below can be read from them.
export NO_COLOR=1
if [ "${LAB_BENCH:-0}" = 1 ]; then sizes="1000 10000"; else sizes=200; fi
changes=${LAB_BENCH_CHANGES:-20}

lab_topology
edgelb_start --dataplane ipvs --interface front --resync-seconds 30 --health-interval-seconds 3600
from=0
for n in ${LAB_BENCH_SIZES:-$sizes}; do
    must in_ns appliance bench_appliance --url "$EDGELB_URL" --token "$EDGELB_TOKEN" \
        --ca "$EDGELB_DATA/tls/cert.pem" --pid "$EDGELB_PID" --from "$from" --to "$n" \
        --changes "$changes" --concurrency 16
    lab_bench "services-$n"
    # The reconciler's passes: the last `changes` are the one-Service changes (1 operation each);
    # the longest is the bulk of the creation.
    grep 'dataplane reconciled' "$EDGELB_LOG" | sed -n 's/.*operations=\([0-9]*\).*elapsed_ms=\([0-9]*\).*/\1 \2/p' \
        >/tmp/passes
    tail -n "$changes" /tmp/passes | awk '{print $2}' | sort -n >/tmp/change-passes
    echo "BENCH name=appliance-pass services=$n passes_so_far=$(wc -l </tmp/passes)" \
        "longest_ms=$(awk '$2 > m {m = $2} END {print m + 0}' /tmp/passes)" \
        "one_change_ops=$(tail -n "$changes" /tmp/passes | awk '{print $1}' | sort -u | tr '\n' ,)" \
        "one_change_p50_ms=$(awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)] + 0}' /tmp/change-passes)" \
        "one_change_max_ms=$(tail -n 1 /tmp/change-passes)"
    assert_eq "IPVS holds $n virtual services" "$n" "$(in_ns appliance ipvsadm -Ln | grep -c '^TCP  10\.64\.')"
    from=$n
done
lab_bench checks-done
edgelb_stop
[ "$LAB_FAILURES" -eq 0 ] || tail -n 50 "$EDGELB_LOG"
lab_done
