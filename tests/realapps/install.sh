#!/usr/bin/env bash
# Installs the real dev servers used by pb's end-to-end tests:
#   - a venv at tests/realapps/.venv with requirements.txt (gunicorn, uvicorn,
#     hypercorn, flask, django),
#   - node_modules via `npm ci` from package-lock.json (express, nodemon, vite).
# Idempotent and quick when already done: each step writes a stamp file holding
# the sha256 of its input (plus the interpreter version) and is skipped while
# that stamp still matches. Works from any cwd. Needs only PyPI and the npm
# registry.
#
# Python: `python3` on PATH (override with PYTHON=/path/to/python3.11).
# On Debian's own /usr/bin/python3, `python3 -m venv` needs the apt package
# python3-venv (it provides ensurepip); without it venv creation fails with
# "ensurepip is not available". This script detects that and says so. On the
# rust machine both pyenv's python3 (3.11.7, first on PATH) and /usr/bin/python3
# (3.11.2, python3-venv installed) work.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

PYTHON="${PYTHON:-python3}"
venv="$here/.venv"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# ---- Python venv -----------------------------------------------------------
py_ver="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
py_want="$(sha requirements.txt) python-$py_ver"
if [[ -x "$venv/bin/python" && -f .stamp-venv && "$(cat .stamp-venv)" == "$py_want" ]]; then
  echo "realapps: venv up to date (python $py_ver)"
else
  echo "realapps: installing venv (python $py_ver) ..."
  rm -f .stamp-venv
  if [[ -x "$venv/bin/python" ]] &&
     [[ "$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)" == "$py_ver" ]]; then
    :  # reuse the existing venv, pip will bring it in line
  else
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
      echo "realapps: $PYTHON has no ensurepip/venv; on Debian: apt-get install -y python3-venv" >&2
      exit 1
    fi
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$py_want" > .stamp-venv
fi

# ---- node_modules ----------------------------------------------------------
node_ver="$(node --version)"
npm_want="$(sha package-lock.json) node-$node_ver"
if [[ -d node_modules && -f .stamp-npm && "$(cat .stamp-npm)" == "$npm_want" ]]; then
  echo "realapps: node_modules up to date (node $node_ver)"
else
  echo "realapps: npm ci (node $node_ver) ..."
  rm -f .stamp-npm
  npm ci --no-audit --no-fund --loglevel=error
  echo "$npm_want" > .stamp-npm
fi
