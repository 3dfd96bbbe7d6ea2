# Sourced by scripts/demo and scripts/test: both run under sudo, and root's
# PATH usually lacks the invoking user's rustup toolchain. Use it in place
# (its proxies need RUSTUP_HOME, which sudo resets along with HOME). Files
# cargo creates (target/, downloaded crates) are then owned by root.
if ! command -v cargo >/dev/null 2>&1; then
    for home in "${HOME:-}" "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)"; do
        if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
            export PATH="$home/.cargo/bin:$PATH"
            export CARGO_HOME="${CARGO_HOME:-$home/.cargo}"
            if [ -d "$home/.rustup" ]; then
                export RUSTUP_HOME="${RUSTUP_HOME:-$home/.rustup}"
            fi
            break
        fi
    done
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), stable >= 1.95" >&2
    exit 1
fi
