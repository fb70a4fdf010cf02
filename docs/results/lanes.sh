# Sourced by the study scripts beside it: a time stamp for their logs, and the wait for the two lanes
# they run side by side.
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
wait_lanes() {  # wait_lanes <pid> <pid>: wait for both even when one fails, and stop the part if either
  local rc=0    # failed, so that nothing is reported from a part that did not finish
  wait "$1" || rc=$?
  wait "$2" || rc=$?
  [ "$rc" = 0 ] || { stamp "a lane failed (exit $rc; see its log): run the part again to continue it"; exit "$rc"; }
}
