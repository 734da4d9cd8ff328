#!/usr/bin/env bash
# Observer overhead benchmarks on the lab (root, `ci/lab up`, static observer built):
#   1. TCP bulk throughput with observers vs none through the lab, default sampling (64 KiB, port
#      filter): metal1 -> metal2 over the lab bridge and over the wan relay, metal1 -> its
#      container ct1 over their direct veth;
#   2. 64-byte UDP flood pps (metal1 -> ct1) with every packet recorded (--sample-udp) vs none,
#      with the observer's CPU % and records drained per second;
#   3. the kernel time of each observer program (kernel.bpf_stats_enabled) during a TCP bulk
#      round: runs/s, ns per run and share of one core, summed over the observers of the path
#      (COST_PATH: veth, the default, one observer; bridge, one in each metal). Unlike throughput
#      this does not depend on how busy the machine is, so it compares builds reliably
#      (OBS_BASELINE=path/to/observer adds a column for another build, measured in the same run);
#   4. start-up: how long the kernel takes to load (verify) each program (`strace -T` of every
#      BPF_PROG_LOAD), median of ROUNDS starts, with OBS_BASELINE alternating in the same run.
# Rounds alternate with/without so machine noise hits both alike; medians are reported.
# Usage: bench/observer/run.sh [ROUNDS]   (prints markdown tables for BENCHMARKS.md)
#   PARTS=tcp,udp,cost,load (default all) picks the parts; OBS_BASELINE adds a baseline build to
#   "tcp", "cost" and "load"; TCP_PATHS="bridge veth wan bridge-1ms bridge-if" (the default) picks the paths.
set -euo pipefail
ROUNDS=${1:-5}
PARTS=${PARTS:-tcp,udp,cost,load}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
ART=${LATPLAN_ARTIFACTS:-$(cd "$(dirname "$0")/../.." && pwd)/target/x86_64-unknown-linux-musl/release}
OBS=$ART/observer
LT=${LAB_TRAFFIC:-/var/lib/latplan-ci/lab/bin/lab-traffic}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -x "$OBS" ] || { echo "missing $OBS: cargo build --release --target x86_64-unknown-linux-musl -p observer" >&2; exit 1; }
[ -x "$LT" ] || { echo "missing $LT: run ci/lab up" >&2; exit 1; }
# Same lock as the lab tests (labtools::testlab::lock_lab): nobody else measures meanwhile.
STATE=${LATPLAN_STATE:-/var/lib/latplan-ci}
exec 9>"$STATE/test.lock"
flock 9
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

start_obs() { # NETNS NAME ARGS... [--strace: time each BPF_PROG_LOAD into $TMP/NAME.strace]
  local ns=$1 name=$2; shift 2
  local wrap=()
  if [ "${!#}" = --strace ]; then
    set -- "${@:1:$#-1}"
    wrap=(strace --seccomp-bpf -e trace=bpf -T -o "$TMP/$name.strace")
  fi
  ip netns exec "$ns" "${wrap[@]}" "$OBS" run "$@" >"$TMP/$name.bin" 2>"$TMP/$name.err" &
  PIDS+=($!); echo $! >"$TMP/$name.pid"
  for _ in $(seq 300); do grep -q "observer: attached" "$TMP/$name.err" && return 0
    grep -q "observer: error" "$TMP/$name.err" && { cat "$TMP/$name.err" >&2; exit 1; }; sleep 0.1; done
  echo "observer $name did not attach" >&2; exit 1
}
# Under strace the PID is strace's: signal its child, the observer (strace would only detach).
stop_obs() { local p; p=$(cat "$TMP/$1.pid"); pkill -TERM -P "$p" || kill -TERM "$p"; wait "$p" || true; }

# The sender runs on CPU 0 and the receiver on CPU 1 in every round: left to the scheduler, the
# two land on one CPU or two from round to round, and the unobserved flow alone then moved
# between 1.9 and 2.8 GB/s.
tcp_round() { # SRC_NS DST_NS DST_IP -> bytes/s
  ip netns exec "$2" taskset -c 1 "$LT" tcp-recv --listen "$3:5201" >"$TMP/recv.json" &
  local r=$!; sleep 0.3
  ip netns exec "$1" taskset -c 0 "$LT" tcp-send --connect "$3:5201" --duration 4s >/dev/null
  wait $r
  jq -r .bytes_per_sec "$TMP/recv.json"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mbps() { awk '{printf "%.0f ", $1/1e6}'; } # bytes/s per line -> MB/s on one line

# One TCP round on PATH: none = no observer, else with the observers of that build.
path_round() { # PATH none|OBSERVER -> bytes/s
  local path=$1 build=$2 extra=() ifc=mgmt0
  # PATH-1ms: the same path with a 1 ms per-flow sampling interval; PATH-if: the interface
  # layers only (inventory `sampling.layers: [dev_send, dev_xmit, dev_recv]`).
  case $path in
    *-1ms) extra=(--min-interval-us 1000) ;;
    *-if) extra=(--layers dev_send,dev_xmit,dev_recv) ;;
  esac
  path=${path%-1ms}; path=${path%-if}
  case $path in
    bridge) src=lp-metal1 dst=lp-metal2 ip=10.77.0.12 ;;
    wan) src=lp-metal1 dst=lp-metal2 ip=10.78.0.2 ifc=wan0 ;;
    veth) src=lp-metal1 dst=lp-ct1 ip=10.77.1.6 ;;
  esac
  if [ "$build" = none ]; then tcp_round $src $dst $ip; return; fi
  case $path in
    bridge|wan) OBS=$build start_obs lp-metal1 a --interfaces $ifc --ports 5201 "${extra[@]}"
                OBS=$build start_obs lp-metal2 b --interfaces $ifc --ports 5201 "${extra[@]}" ;;
    veth) OBS=$build start_obs lp-metal1 a --interfaces veth-ct1 --containers lp-ct1 --ports 5201 "${extra[@]}" ;;
  esac
  tcp_round $src $dst $ip
  stop_obs a; [ "$path" = veth ] || stop_obs b
}

if part tcp; then
builds=("$OBS"); [ -z "${OBS_BASELINE:-}" ] || builds+=("$OBS_BASELINE")
head="| benchmark | without | with observer | ratio |"; rule="|---|---|---|---|"
[ -z "${OBS_BASELINE:-}" ] || { head="$head with $OBS_BASELINE | ratio |"; rule="$rule---|---|"; }
echo "$head"; echo "$rule"
# bridge and wan: observers on both metals; veth: metal1's observer covers its container ct1.
# The bridge and the direct veth keep the kernel's default offloads (TSO/GSO: 64 KiB segments),
# as a host's own stack sends; the wan's links into its relay have them off (ci/lab), so there
# every hook runs once per 1448-byte segment: the worst case. "bridge-1ms" adds a 1 ms per-flow
# sampling interval (inventory `sampling.interval: 1ms`), "bridge-if" keeps the interface layers
# only. With OBS_BASELINE, each round also runs that build, so both builds' ratios come from one
# run.
for path in ${TCP_PATHS:-bridge veth wan bridge-1ms bridge-if}; do
  : >"$TMP/none"; for i in "${!builds[@]}"; do : >"$TMP/obs$i"; done
  for _ in $(seq "$ROUNDS"); do
    path_round $path none >>"$TMP/none"
    for i in "${!builds[@]}"; do path_round $path "${builds[$i]}" >>"$TMP/obs$i"; done
  done
  echo "$path rounds, MB/s: none $(mbps <"$TMP/none")$(for i in "${!builds[@]}"; do echo -n " | ${builds[$i]##*/} $(mbps <"$TMP/obs$i")"; done)" >&2
  n=$(median <"$TMP/none")
  row=$(awk -v p="$path" -v r="$ROUNDS" -v n="$n" 'BEGIN { printf "| TCP bulk %s, MB/s (median of %s) | %.1f |", p, r, n/1e6 }')
  for i in "${!builds[@]}"; do
    row="$row$(awk -v n="$n" -v o="$(median <"$TMP/obs$i")" 'BEGIN { printf " %.1f | %.3f |", o/1e6, o/n }')"
  done
  echo "$row"
done
fi

# UDP flood: 64-byte datagrams metal1 -> ct1 over the direct veth, every packet recorded at
# dev_send; once with every layer attached (sock_send's syscall hook then runs per datagram too),
# once with the interface layers only.
flood() { # LABEL OBSERVER-ARGS...
  local label=$1; shift
  : >"$TMP/none"; : >"$TMP/obs"; : >"$TMP/cpu"; : >"$TMP/rps"
  for _ in $(seq "$ROUNDS"); do
    ip netns exec lp-metal1 "$LT" udp-flood --connect 10.77.1.6:9 --size 64 --duration 3s | jq -r .ops_per_sec >>"$TMP/none"
    start_obs lp-metal1 a --interfaces veth-ct1 --sample-udp --stats-interval 1 "$@"
    ip netns exec lp-metal1 "$LT" udp-flood --connect 10.77.1.6:9 --size 64 --duration 3s | jq -r .ops_per_sec >>"$TMP/obs"
    stop_obs a
    # Busiest stats interval: the observer's CPU and the records it shipped per second then.
    "$OBS" dump --json "$TMP/a.bin" | jq -s -r '[.[] | select(.stats) | .stats] as $s
      | [range(1; $s|length) as $i | {cpu: $s[$i].cpu_percent,
           rps: (($s[$i].records_sent - $s[$i-1].records_sent) / (($s[$i].ts_ns - $s[$i-1].ts_ns)/1e9))}]
      | max_by(.rps) | "\(.cpu) \(.rps) \([$s[-1].layers[].ringbuf_full] | add)"' >"$TMP/flood"
    read -r c r f <"$TMP/flood"; echo "$c" >>"$TMP/cpu"; echo "$r" >>"$TMP/rps"
    [ "$f" = 0 ] || echo "note: $f records lost to a full ring buffer in one round" >&2
  done
  n=$(median <"$TMP/none"); o=$(median <"$TMP/obs")
  awk -v l="$label" -v r="$ROUNDS" -v n="$n" -v o="$o" -v c="$(median <"$TMP/cpu")" -v d="$(median <"$TMP/rps")" 'BEGIN {
    printf "| UDP 64 B flood pps, every packet recorded, %s (median of %s) | %.0f | %.0f | %.3f |\n", l, r, n, o, o/n
    printf "| observer CPU %% of one core at that flood (busiest second) | | %.1f | |\n", c
    printf "| records drained and shipped per second at that flood | | %.0f | |\n", d }'
}
if part udp; then
flood "all layers"
flood "interface layers only" --layers dev_send,dev_xmit,dev_recv
fi

# Kernel time per program: bpf_stats counts every run of every program (ours filter most packets
# out early), so this is what the observer costs the host, flow or not.
# Two observers in one kernel (COST_PATH=bridge) load programs of the same names: a name's line
# sums both, as the flow pays both.
prog_costs() { # OBSERVER -> "name runs_per_s ns_per_run" lines
  local obs=$1 old; old=$(sysctl -n kernel.bpf_stats_enabled)
  sysctl -qw kernel.bpf_stats_enabled=1
  case ${COST_PATH:-veth} in
    veth) OBS=$obs start_obs lp-metal1 k --interfaces veth-ct1 --containers lp-ct1 --ports 5201
          set -- lp-metal1 lp-ct1 10.77.1.6 ;;
    bridge) OBS=$obs start_obs lp-metal1 k --interfaces mgmt0 --ports 5201
            OBS=$obs start_obs lp-metal2 k2 --interfaces mgmt0 --ports 5201
            set -- lp-metal1 lp-metal2 10.77.0.12 ;;
    *) echo "COST_PATH must be veth or bridge" >&2; exit 1 ;;
  esac
  local t0; t0=$(date +%s%N)
  tcp_round "$@" >/dev/null
  local secs; secs=$(( ($(date +%s%N) - t0) / 1000000 ))
  bpftool prog show -j | jq -r --argjson ms "$secs" '[.[] | select(.name|startswith("lp_")) | select((.run_cnt // 0) > 0)]
    | group_by(.name)[] | {name: .[0].name, runs: (map(.run_cnt) | add), ns: (map(.run_time_ns) | add)}
    | "\(.name) \(.runs * 1000 / $ms | floor) \(.ns / .runs | floor)"' | sort
  stop_obs k
  [ "${COST_PATH:-veth}" = veth ] || stop_obs k2
  sysctl -qw kernel.bpf_stats_enabled="$old"
}
# Start-up: the kernel's verifier time per program, from `strace -T` around each BPF_PROG_LOAD
# (the observer itself does little else before it attaches). One start per build per round.
load_times() { # OBSERVER -> "name seconds" lines
  OBS=$1 start_obs lp-metal1 s --interfaces veth-ct1 --ports 5201 --strace
  stop_obs s
  grep -o 'prog_name="lp_[^"]*".*<[0-9.]*>$' "$TMP/s.strace" | sed -E 's/prog_name="([^"]*)".*<([0-9.]+)>$/\1 \2/'
}
if part load; then
  builds=("$OBS"); [ -z "${OBS_BASELINE:-}" ] || builds+=("$OBS_BASELINE")
  for i in "${!builds[@]}"; do : >"$TMP/load$i"; done
  for _ in $(seq "$ROUNDS"); do
    for i in "${!builds[@]}"; do load_times "${builds[$i]}" | awk '{s+=$2; print} END {print "total", s}' >>"$TMP/load$i"; done
  done
  echo
  head="| program (median of $ROUNDS starts) |"; rule="|---|"
  for b in "${builds[@]}"; do head="$head load s, $b |"; rule="$rule---|"; done
  echo "$head"; echo "$rule"
  for name in $(awk '{print $1}' "$TMP/load0" | sort -u); do
    row="| $name |"
    for i in "${!builds[@]}"; do row="$row $(awk -v n="$name" '$1 == n {print $2}' "$TMP/load$i" | median) |"; done
    echo "$row"
  done
fi

part cost || exit 0
echo
if [ -n "${OBS_BASELINE:-}" ]; then
  echo "| program | runs/s | ns/run (this build) | runs/s | ns/run ($OBS_BASELINE) | ratio of ns/run |"
  echo "|---|---|---|---|---|---|"
else
  echo "| program | runs/s | ns/run | % of one core |"
  echo "|---|---|---|---|"
fi
: >"$TMP/cost.new"; : >"$TMP/cost.old"
for _ in $(seq "$ROUNDS"); do
  prog_costs "$OBS" >>"$TMP/cost.new"
  [ -z "${OBS_BASELINE:-}" ] || prog_costs "$OBS_BASELINE" >>"$TMP/cost.old"
done
col() { awk -v n="$1" -v c="$2" '$1==n {print $c}' "$3" | median; }
total_new=0; total_old=0
# Every program either build ran (a program can exist in one build only).
for name in $(cut -d' ' -f1 "$TMP/cost.new" "$TMP/cost.old" | sort -u); do
  rps=$(col "$name" 2 "$TMP/cost.new"); ns=$(col "$name" 3 "$TMP/cost.new")
  total_new=$(awk -v t="$total_new" -v r="${rps:-0}" -v a="${ns:-0}" 'BEGIN {print t + r * a / 1e7}')
  if [ -n "${OBS_BASELINE:-}" ]; then
    brps=$(col "$name" 2 "$TMP/cost.old"); base=$(col "$name" 3 "$TMP/cost.old")
    total_old=$(awk -v t="$total_old" -v r="${brps:-0}" -v a="${base:-0}" 'BEGIN {print t + r * a / 1e7}')
    awk -v n="$name" -v r="$rps" -v a="$ns" -v br="$brps" -v b="$base" 'BEGIN {
      printf "| %s | %s | %s | %s | %s | %s |\n", n, r, a, br, b, (a > 0 && b > 0 ? sprintf("%.2f", a / b) : "") }'
  else
    awk -v n="$name" -v r="$rps" -v a="$ns" 'BEGIN { printf "| %s | %d | %d | %.2f |\n", n, r, a, r * a / 1e7 }'
  fi
done
if [ -n "${OBS_BASELINE:-}" ]; then
  printf "| **all programs, %% of one core** | | %.1f | | %.1f | %.2f |\n" "$total_new" "$total_old" "$(awk -v a="$total_new" -v b="$total_old" 'BEGIN {print (b > 0 ? a / b : 0)}')"
else
  printf "| **all programs** | | | %.1f |\n" "$total_new"
fi
