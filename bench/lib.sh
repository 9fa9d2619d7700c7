# Sourced by bench/*/run.sh: each bench installs what it needs, or stops saying what is missing
# and how to get it. Nothing here is silent: every install prints one line first.

# bench_fail MESSAGE: the one line a person needs, then exit 1.
bench_fail() {
  echo "bench: $*" >&2
  exit 1
}

# bench_need_cmd PATH DEBIAN_PACKAGE: installs the package with apt when PATH is missing.
bench_need_cmd() {
  local path="$1" pkg="$2"
  [ -x "$path" ] && return 0
  command -v apt-get >/dev/null || bench_fail "$path is missing; install the Debian package $pkg"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bench: installing $pkg (for $path)" >&2
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
    --no-install-recommends "$pkg" >/dev/null \
    || bench_fail "$path is missing and 'apt-get install $pkg' failed"
  [ -x "$path" ] || bench_fail "$path is still missing after installing $pkg"
}

# bench_need_py MODULE PIP_SPEC...: pip-installs PIP_SPEC when MODULE does not import.
bench_need_py() {
  local module="$1"
  shift
  python3 -c "import $module" 2>/dev/null && return 0
  echo "bench: installing $* (Python module $module)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "$@" \
    || bench_fail "Python module $module is missing and 'pip install $*' failed"
  python3 -c "import $module" 2>/dev/null \
    || bench_fail "Python module $module still does not import after 'pip install $*'"
}

# bench_need_ort: exports ORT_DYLIB_PATH (libonnxruntime of the pinned onnxruntime wheel,
# installed when missing) for cacd's `onnxruntime` engine.
bench_need_ort() {
  if [ -n "${ORT_DYLIB_PATH:-}" ]; then
    [ -f "$ORT_DYLIB_PATH" ] || bench_fail "ORT_DYLIB_PATH=$ORT_DYLIB_PATH is not a file"
    export ORT_DYLIB_PATH
    return 0
  fi
  local root spec
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  spec=$(grep -m1 '^onnxruntime==' "$root/scripts/requirements-test.txt")
  if ! ORT_DYLIB_PATH="$("$root/scripts/ort-dylib")"; then
    bench_need_py onnxruntime "$spec"
    ORT_DYLIB_PATH="$("$root/scripts/ort-dylib")" \
      || bench_fail "the onnxruntime wheel ($spec) is installed but holds no libonnxruntime.so"
  fi
  export ORT_DYLIB_PATH
}
