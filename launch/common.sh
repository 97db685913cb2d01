# Sourced by the launch scripts. With DRY_RUN=1, `run` prints each command (quoted so it
# can be pasted into a shell) instead of running it.

dry_run() { [[ "${DRY_RUN:-0}" == 1 ]]; }

quote() {
  local arg words=()
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
      words+=("$arg")
    else
      words+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "${words[*]}"
}

run() {
  if dry_run; then
    quote "$@"
  else
    "$@"
  fi
}

usage_error() {
  echo "$1" >&2
  exit 2
}
