#!/bin/sh
# lab/init.sh: PID 1 of the kernel-lab guest. Mounts the pseudo file systems, loads the kernel
# modules in the order xtask computed from modules.dep, runs ONE scenario (named on the kernel
# command line) and prints its result marker, then powers off. It never decides pass/fail
# itself beyond the scenario's exit status; xtask turns the marker into the exit code.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

# The initramfs has no /dev/console node (building it needs no root), so the kernel started us
# without stdin/stdout: mount devtmpfs first, then take the console.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
# The firmware leaves the cursor mid-line; start ours on a fresh one.
echo
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp

scenario=
timeout=270
LAB_BENCH=0
read -r cmdline </proc/cmdline
for word in $cmdline; do
    case "$word" in
        edgelb.scenario=*) scenario=${word#*=} ;;
        edgelb.timeout=*) timeout=${word#*=} ;;
        edgelb.bench=1) LAB_BENCH=1 ;;
    esac
done
export LAB_BENCH LAB_SCENARIO="$scenario"

bench() {
    [ "$LAB_BENCH" = 1 ] && echo "EDGELB-LAB-BENCH name=$1 uptime=$(cut -d' ' -f1 /proc/uptime)"
    return 0
}

# The blank line keeps a stray kernel message from sharing the marker's line.
finish() {
    echo
    echo "EDGELB-LAB-RESULT name=${scenario:-none} status=$1"
    sync
    poweroff -f
    # Only reached if poweroff failed: exiting PID 1 panics, and panic=-1 with -no-reboot stops qemu.
    exit 1
}

bench init
[ -n "$scenario" ] || { echo "lab-init: no edgelb.scenario= on the kernel command line"; finish FAIL; }
[ -f "/lab/scenarios/$scenario.sh" ] || { echo "lab-init: no scenario /lab/scenarios/$scenario.sh"; finish FAIL; }

release=$(uname -r)
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/lib/modules/$release/$module" || { echo "lab-init: insmod $module failed"; finish FAIL; }
done </lab/modules.load
bench modules-loaded

/usr/sbin/ip link set lo up
# Options from `--env` on the host.
# shellcheck source=/dev/null
. /lab/env

cd /lab || finish FAIL
echo "lab-init: running scenario $scenario (time limit ${timeout}s)"
# The scenario runs in its own shell so its `exit` ends the scenario, not PID 1; timeout makes a
# hang a FAIL with a marker instead of a silent host-side kill.
timeout "$timeout" /bin/sh "/lab/scenarios/$scenario.sh"
status=$?
bench scenario-done
if [ "$status" -eq 0 ]; then
    finish PASS
fi
if [ "$status" -eq 143 ]; then
    echo "lab-init: scenario $scenario timed out after ${timeout}s (host --timeout less 30s)"
else
    echo "lab-init: scenario $scenario exited with status $status"
fi
finish FAIL
