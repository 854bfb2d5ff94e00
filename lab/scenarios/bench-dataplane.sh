# shellcheck shell=sh
# lab/scenarios/bench-dataplane.sh: data-plane timing in the real kernel, for docs/benchmarks.md.
# For 1,000 and 10,000 virtual services x 10 real servers: edgelb's full sync from empty (plan +
# one pipelined IPVS batch) against `ipvsadm --restore` of the same set, a one-service change at
# that size, and the peak RSS. Needs `--ship target/lab-ship/bench_dataplane` (see lab/README.md).

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

command -v bench_dataplane >/dev/null || die "no bench_dataplane: --ship target/release/examples/bench_dataplane"
now() { cut -d' ' -f1 /proc/uptime; }
# Without --bench, 1,000 only: a check of the full sync that fits the suite's time.
if [ "${LAB_BENCH:-0}" = 1 ]; then sizes="1000 10000"; else sizes=1000; fi
for n in ${LAB_BENCH_SIZES:-$sizes}; do
    must bench_dataplane "$n" /tmp/restore.txt
    ipvsadm -C
    t0=$(now)
    must ipvsadm --restore </tmp/restore.txt
    t1=$(now)
    echo "BENCH name=ipvsadm-restore services=$n ms=$(echo "$t0 $t1" | awk '{printf "%d", ($2 - $1) * 1000}')"
    assert_eq "ipvsadm restored every service" "$n" "$(ipvsadm -Ln | grep -c '^TCP')"
    ipvsadm -C
done
lab_done
