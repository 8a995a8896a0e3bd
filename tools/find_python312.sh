#!/usr/bin/env bash
# Print the path of a working Python 3.12 interpreter, or explain what is missing.
# pyenv's `python3.12` shim refuses to run unless pyenv selects 3.12, so look for the real
# binary under $(pyenv root) first, then for a python3.12 on PATH that actually runs.
set -u
candidates=()
if command -v pyenv >/dev/null 2>&1; then
  for p in "$(pyenv root)"/versions/3.12*/bin/python3.12; do [ -x "$p" ] && candidates+=("$p"); done
fi
command -v python3.12 >/dev/null 2>&1 && candidates+=("$(command -v python3.12)")
for p in "${candidates[@]}"; do
  if "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
    echo "$p"; exit 0
  fi
done
echo "error: Python 3.12 not found (megatron-core 0.19 needs it). Install it, e.g." \
     "'pyenv install 3.12' or your distribution's python3.12 package, then rerun." >&2
exit 1
