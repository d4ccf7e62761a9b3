#!/bin/sh
# Creates the virtualenv VENV (if need be) and installs the project with its dev tools into
# it, then touches VENV/.installed. Safe to run several at once (`make run` and `make test`
# started together in a fresh clone): one installs while the others wait on the lock, then
# find the stamp newer than pyproject.toml and do nothing.
#   scripts/install.sh VENV      (PYTHON: the interpreter that creates it, default python3)
set -eu
venv="$1"
python="${PYTHON:-python3}"
stamp="$venv/.installed"
lock="$venv/.install.lock"

up_to_date() {
    [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]
}

mkdir -p "$venv"
if command -v flock > /dev/null 2>&1; then
    exec 9> "$lock"
    flock 9
else
    echo "flock not found (util-linux): installing without a lock" >&2
fi
if up_to_date; then
    exit 0
fi
test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[dev]"
touch "$stamp"
