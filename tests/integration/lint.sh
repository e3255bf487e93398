# make lint: cppcheck finds nothing and the code is clang-formatted.
source "$(dirname "$0")/lib.sh"
make -s -C "$ROOT" lint >"$T/lint.log" 2>&1 || fail "make lint: $(cat "$T/lint.log")"
echo "ok"
