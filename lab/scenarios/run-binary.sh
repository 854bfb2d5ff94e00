# shellcheck shell=sh
# lab/scenarios/run-binary.sh: runs a program shipped into the guest (`--ship`) with the
# arguments given on the host (`--run PROGRAM --arg ARG...`, one per line in /lab/run.args), and
# passes if it exits 0. With LAB_RUN_NETNS=<ns> (`--env`), it first builds the standard topology
# and runs the program inside that namespace (e.g. `appliance`); otherwise in the root namespace.
# With LAB_RUN_EXPECT=<text>, the program's output must also contain that text
# (e.g. `--env LAB_RUN_EXPECT=IPVS-SMOKE-OK`).

# shellcheck source=SCRIPTDIR/../lib.sh
. /lab/lib.sh

[ -s /lab/run.args ] || die "nothing to run: give --run PROGRAM (and --ship it)"
set --
while IFS= read -r arg; do
    set -- "$@" "$arg"
done </lab/run.args

if [ -n "${LAB_RUN_NETNS:-}" ]; then
    lab_topology
    set -- "$IP" netns exec "$LAB_RUN_NETNS" "$@"
fi

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
echo "+ $*"
lab_bench program-start
# pipefail (busybox ash has it): the status is the program's, not tee's; tee keeps the output
# streaming to the console.
# shellcheck disable=SC3040
set -o pipefail
"$@" 2>&1 | tee /tmp/run.out
status=$?
# shellcheck disable=SC3040
set +o pipefail
lab_bench program-done
[ "$status" -eq 0 ] || die "program exited with status $status: $*"
if [ -n "${LAB_RUN_EXPECT:-}" ]; then
    assert_contains "output names $LAB_RUN_EXPECT" "$(cat /tmp/run.out)" "$LAB_RUN_EXPECT"
fi
lab_done
