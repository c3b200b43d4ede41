# Sourced by the bench scripts: `step_ms BIN [bench train flags...]` prints the median training-step
# time in ms of `BIN bench train --json --no-peak --steps "$steps" --warmup 2` (set `steps` first).
step_ms() {
  "$1" bench train --json --no-peak --steps "$steps" --warmup 2 "${@:2}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["times"]["total_ms"])'
}
