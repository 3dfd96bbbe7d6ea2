#!/usr/bin/env bash
# trace.sh - where an idle round trip's time goes, from tracefs (root only).
# Run while `lab.sh up IMPL` has a tunnel up.
#
#   trace.sh syscalls N PID...   trace the PIDs' threads during N pings:
#                                on-CPU time of each system call and user
#                                time between consecutive calls (medians)
#   trace.sh timeline N PID_A PID_B
#                                trace everything during N pings: each
#                                ping's legs through node A and node B
#
# The trace clock is `mono` while tracing (then restored): the default
# per-CPU `local` clock makes intervals that cross CPUs meaningless.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T=/sys/kernel/tracing
OUT=${TRACE_OUT:-/tmp/segmesh-trace.txt}
EVENTS="raw_syscalls/sys_enter raw_syscalls/sys_exit sched/sched_switch"
# The timeline also records where each wakeup lands (the waker's vCPU or
# the other one).
WAKE_EVENTS="sched/sched_waking sched/sched_migrate_task"

tids() { local p; for p in "$@"; do ls "/proc/$p/task"; done; }

run() {   # run N FILTER_SYSCALLS FILTER_SCHED [EXTRA_EVENTS]
    local e clock events="$EVENTS ${4:-}"
    clock=$(sed 's/.*\[\(.*\)\].*/\1/' $T/trace_clock)
    echo 0 > $T/tracing_on
    echo > $T/trace
    echo mono > $T/trace_clock
    echo 40000 > $T/buffer_size_kb
    for e in raw_syscalls/sys_enter raw_syscalls/sys_exit; do echo "$2" > "$T/events/$e/filter"; done
    echo "$3" > $T/events/sched/sched_switch/filter
    for e in $events; do echo 1 > "$T/events/$e/enable"; done
    echo 1 > $T/tracing_on
    ip netns exec mb-a ping -q -n -c "$1" -i 0.01 10.232.0.2 | tail -n 1
    echo 0 > $T/tracing_on
    for e in $events; do echo 0 > "$T/events/$e/enable"; echo 0 > "$T/events/$e/filter"; done
    cat $T/trace > "$OUT"
    echo "$clock" > $T/trace_clock
}

[ "$(id -u)" = 0 ] || { echo "trace.sh: run as root" >&2; exit 1; }
case ${1:-} in
    syscalls)
        n=$2; shift 2
        t=$(tids "$@")
        f=$(for x in $t; do printf 'common_pid==%s||' "$x"; done)
        s=$(for x in $t; do printf 'prev_pid==%s||next_pid==%s||' "$x" "$x"; done)
        run "$n" "${f%||}" "${s%||}"
        python3 "$HERE/tracestat.py" syscalls "$OUT" "$n"
        ;;
    timeline)
        run "$2" 0 0 "$WAKE_EVENTS"
        python3 "$HERE/tracestat.py" timeline "$OUT" "$(tids "$3" | paste -sd,)" "$(tids "$4" | paste -sd,)"
        ;;
    *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
