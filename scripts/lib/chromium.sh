# shellcheck shell=bash
# Source this file, then call `s360_chromium_ensure`: it makes Debian's `chromium` available for the admin
# page's browser test (tests/api/admin.rs) and exports SECUR360_CHROMIUM with its path.
#
#   . scripts/lib/chromium.sh && s360_chromium_ensure
#
# An already-set SECUR360_CHROMIUM pointing at an executable wins. Otherwise /usr/bin/chromium is used,
# installed with apt-get when missing (root, or sudo without a password). Returns non-zero, with the reason,
# when no Chromium can be had: the test fails rather than skips without it.

s360_chromium_ensure() {
    if [ -n "${SECUR360_CHROMIUM:-}" ] && [ -x "${SECUR360_CHROMIUM}" ]; then
        export SECUR360_CHROMIUM
        return 0
    fi
    local path=/usr/bin/chromium
    if [ ! -x "$path" ]; then
        local sudo=""
        if [ "$(id -u)" -ne 0 ]; then
            if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
                sudo="sudo -n"
            else
                echo "s360_chromium_ensure: $path is missing and apt-get needs root; install Debian's chromium" >&2
                return 1
            fi
        fi
        echo "s360_chromium_ensure: installing Debian's chromium (apt-get)" >&2
        $sudo apt-get update -qq >&2 || { echo "s360_chromium_ensure: apt-get update failed" >&2; return 1; }
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2 \
            || { echo "s360_chromium_ensure: apt-get install chromium failed" >&2; return 1; }
    fi
    if ! "$path" --version >/dev/null 2>&1; then
        echo "s360_chromium_ensure: $path does not run" >&2
        return 1
    fi
    export SECUR360_CHROMIUM="$path"
}
