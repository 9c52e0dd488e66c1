# Shell functions deploy/bootstrap.sh and deploy/install.sh share (sourced, not run): Debian packages and a
# Python >= 3.12 with venv. The caller sets `me` (the name its messages start with) before sourcing.

say() { printf '%s: %s\n' "${me:-egress}" "$*" >&2; }

# Install the Debian packages that are missing; without root or apt-get, say which are missing and go on.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        say "missing Debian packages: ${missing[*]} (run as root on Debian/Ubuntu to install them)"
        return 0
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python_ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }

# Print the first Python >= 3.12 that can make a venv ($PYTHON first); fail if there is none.
find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.14 python3.13 python3.12 python3 \
        "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python /root/.pyenv/versions/3.1[2-9]*/bin/python; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
        if python_ok "$candidate"; then
            command -v "$candidate" 2>/dev/null || echo "$candidate"
            return 0
        fi
    done
    return 1
}

# find_python, installing Debian's python3 if there is none (Debian 13 and Ubuntu 24.04 ship 3.12 or later).
need_python() {
    local python
    if ! python=$(find_python); then
        say "no Python >= 3.12 with venv found; installing Debian's python3"
        apt_install python3 python3-venv python3-pip
        python=$(find_python) || { say "Python >= 3.12 is required (Debian 13 / Ubuntu 24.04 ship one; or set PYTHON=...)"; return 1; }
    fi
    echo "$python"
}
