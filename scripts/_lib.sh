# Shared by scripts/test, scripts/demo and scripts/bench: find Pythons, build venvs.
# shellcheck shell=bash

# find_python 3.X: print the path of a working python3.X, or nothing.
find_python() {
  local v=$1 p
  if p=$(command -v "python$v" 2>/dev/null) && "$p" -c 'pass' >/dev/null 2>&1; then
    echo "$p"; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    # pyenv's shim refuses versions that are not active; ask for the real binary.
    for p in $(ls -d "$(pyenv root)/versions/$v".* 2>/dev/null | sort -V -r); do
      if [ -x "$p/bin/python$v" ] && "$p/bin/python$v" -c 'pass' >/dev/null 2>&1; then
        echo "$p/bin/python$v"; return
      fi
    done
  fi
}

# default_python: the newest of 3.13 .. 3.10 found, for the main .venv.
default_python() {
  local v p
  for v in 3.12 3.13 3.11 3.10; do
    p=$(find_python "$v")
    if [ -n "$p" ]; then echo "$p"; return; fi
  done
}

# ensure_venv DIR PYTHON EXTRAS: create DIR if missing and install the project into it,
# again only when pyproject.toml changed since the last install.
ensure_venv() {
  local dir=$1 python=$2 extras=$3 stamp want
  if [ ! -x "$dir/bin/python" ]; then
    echo "creating $dir with $python" >&2
    "$python" -m venv "$dir"
  fi
  stamp="$dir/.prodbug-installed"
  want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing prodbug${extras:+[$extras]} into $dir" >&2
    # The build backend's chatter goes to a log, shown only when the install fails.
    if ! { "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip &&
           "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
             -e ".${extras:+[$extras]}"; } >"$dir/install.log" 2>&1; then
      cat "$dir/install.log" >&2
      echo "installing into $dir failed (log above)" >&2
      return 1
    fi
    echo "$want" > "$stamp"
  fi
}
