# Sourced by coordinator.sh and node.sh: running one long-lived child under
# a shell that is PID 1 of its container.

# forward_signals PID: `docker stop` sends TERM to PID 1 (this shell); pass
# it on, so the child shuts down cleanly instead of being killed after the
# grace period.
forward_signals() {
    trap "kill -TERM $1 2>/dev/null" TERM INT
}

# mark_ready: the compose healthcheck tests for this file.
mark_ready() {
    touch /tmp/ready
}

# exit_with PID: waits for the child and exits with its status. A trapped
# signal interrupts `wait` early, so it waits again for the real exit.
exit_with() {
    status=0
    wait "$1" || status=$?
    if kill -0 "$1" 2>/dev/null; then
        status=0
        wait "$1" || status=$?
    fi
    exit "$status"
}
