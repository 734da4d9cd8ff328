#!/usr/bin/env bash
# Benchmark: `latplan apply` + `latplan teardown` wall time on N lab hosts, against Ansible doing
# the same work (push the two binaries, verify their SHA-256, start them, stop them, remove them)
# on the same hosts with its best settings (forks = N, pipelining, ControlPersist, no fact
# gathering); latplan with ssh.control_persist (the same 60 s as Ansible's ControlPersist), so
# each tool's teardown runs over the connections its apply opened. Results go to stdout as a Markdown table; logs to $LATPLAN_STATE/bench-apply-logs.
#
#   bench/apply/run.sh [N ...]            default: 8 16 32
#   BENCH_DURATION=1 BENCH_REPEAT=1       session length (s) and runs per N (the median is shown).
#                                         1 s: the issue compares Ansible pushing, verifying,
#                                         starting and stopping, with no session to wait out; a
#                                         longer session adds the same seconds to both tools.
#
# Needs root, the built binaries (latplan, static observer and timesync) and network access to
# PyPI the first time: ansible-core is installed into a venv under $LATPLAN_TOOLS/ansible (kept
# across runs, not a project dependency). The benchmark lab is its own (bench/apply/lab.sh): it
# never touches the standard lab.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=ci/lib.sh
. "$repo/ci/lib.sh"
need_root

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(8 16 32)
duration=${BENCH_DURATION:-1}
repeat=${BENCH_REPEAT:-1}
target="${CARGO_TARGET_DIR:-$repo/target}"
latplan=${LATPLAN_BIN:-$target/release/latplan}
export LATPLAN_ARTIFACTS=${LATPLAN_ARTIFACTS:-$target/x86_64-unknown-linux-musl/release}
# The benchmark's sessions run on the SSH bus: latplan pushes observer-ssh (the observer without
# its Redis sink) as bin/observer, and so does the Ansible play.
for f in "$latplan" "$LATPLAN_ARTIFACTS/observer-ssh" "$LATPLAN_ARTIFACTS/timesync"; do
  [ -x "$f" ] || die "$f is missing: cargo build --release -p planner; ci/build-static"
done
BENCH_DIR=$LATPLAN_STATE/bench-apply
LOGS=$LATPLAN_STATE/bench-apply-logs
mkdir -p "$LOGS"

# ansible-core in a venv of its own, installed once (idempotent: kept while its version matches).
ANSIBLE_VERSION=${ANSIBLE_VERSION:-2.19.4}
venv=$LATPLAN_TOOLS/ansible
if ! "$venv/bin/ansible-playbook" --version 2>/dev/null | grep -q "core $ANSIBLE_VERSION\]"; then
  log "installing ansible-core $ANSIBLE_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "ansible-core==$ANSIBLE_VERSION"
fi

lab() { "$here/lab.sh" "$@" >>"$LOGS/lab.log" 2>&1; }
# latplan's SSH control directories go to a temporary directory of the benchmark's own (short:
# socket paths are limited to 107 bytes), never near anyone else's.
ltmp=$(mktemp -d)
# The masters latplan keeps between its commands (ssh.control_persist in the benchmark's inventory,
# as Ansible's ControlPersist) go under the benchmark's own state directory, never the user's.
export LATPLAN_STATE_DIR=$ltmp/state
trap 'lab down || true; rm -rf "$ltmp"' EXIT

# Prefixes each line with the seconds since the command started (where the time goes). One
# process for the whole log: a clock read per line, no fork per line. (A `date` per line cost
# 30-200 ms each on a loaded machine, so the stamps lagged and the timed pipeline ended late by
# up to tens of seconds for commands that print hundreds of lines, Ansible's most of all.)
stamp() { perl -MTime::HiRes=time -e '$| = 1; my $t0 = shift; while (<STDIN>) { printf "%7.2f %s", time - $t0, $_ }' "$1"; }

# Seconds (2 decimals) a command takes; its output goes to a log, each line time-stamped.
timed() {
  local logf=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  # CPU of the manager side: the command and the children it waited for (Ansible's workers).
  if ! /usr/bin/time -o "$logf.cpu" -f "%U %S" "$@" 2>&1 | stamp "$t0" >"$logf"; then
    log "failed: $* (see $logf)"
    tail -20 "$logf" >&2
    return 1
  fi
  t1=$(date +%s.%N)
  echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}'
}

cpu_of() { awk '{printf "%.1f", $1 + $2}' "$1.cpu"; }

median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# Sets `cmd` to the ansible-playbook command for `n` hosts and a play (external, so time runs it).
ansible_cmd() {
  local n=$1 play=$2
  cmd=(env ANSIBLE_CONFIG="$here/ansible.cfg" ANSIBLE_FORKS="$n" ANSIBLE_SSH_CONTROL_PATH_DIR="$BENCH_DIR/cp" \
    "ANSIBLE_SSH_ARGS=-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=$BENCH_DIR/known_hosts -o StrictHostKeyChecking=yes" \
    "$venv/bin/ansible-playbook" -i "$BENCH_DIR/inventory/ansible.ini" "$here/$play" \
    -e "artifacts=$LATPLAN_ARTIFACTS" -e "duration=$duration" \
    -e "observer_sha256=$(sha256sum "$LATPLAN_ARTIFACTS/observer-ssh" | cut -d' ' -f1)" \
    -e "timesync_sha256=$(sha256sum "$LATPLAN_ARTIFACTS/timesync" | cut -d' ' -f1)")
}

echo "| hosts | load (1 min) | latplan apply | latplan teardown | latplan total | latplan CPU | ansible apply | ansible teardown | ansible total | ansible CPU | ratio (total) | ratio (without the ${duration} s session) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for n in "${sizes[@]}"; do
  la=() lt=() aa=() at=() lc=() ac=()
  # The machine is shared: its load when this size starts is part of the result.
  read -r load _ </proc/loadavg
  for r in $(seq "$repeat"); do
    lab up "$n"
    inv=$BENCH_DIR/inventory
    # latplan: a fresh apply (everything pushed) with a session of $duration, then teardown.
    la+=("$(timed "$LOGS/latplan-apply-$n-$r.log" env TMPDIR="$ltmp" "$latplan" apply "$inv" --duration "${duration}s" --forks "$n")")
    lt+=("$(timed "$LOGS/latplan-teardown-$n-$r.log" env TMPDIR="$ltmp" "$latplan" teardown "$inv" --forks "$n")")
    # Ansible: the same hosts, fresh (its own install dirs), each play one ansible-playbook run.
    ansible_cmd "$n" apply.yml
    aa+=("$(timed "$LOGS/ansible-apply-$n-$r.log" "${cmd[@]}")")
    ansible_cmd "$n" teardown.yml
    at+=("$(timed "$LOGS/ansible-teardown-$n-$r.log" "${cmd[@]}")")
    lc+=("$(echo "$(cpu_of "$LOGS/latplan-apply-$n-$r.log") $(cpu_of "$LOGS/latplan-teardown-$n-$r.log")" | awk '{print $1 + $2}')")
    ac+=("$(echo "$(cpu_of "$LOGS/ansible-apply-$n-$r.log") $(cpu_of "$LOGS/ansible-teardown-$n-$r.log")" | awk '{print $1 + $2}')")
    lab down
  done
  m_la=$(echo "${la[*]}" | median); m_lt=$(echo "${lt[*]}" | median)
  m_aa=$(echo "${aa[*]}" | median); m_at=$(echo "${at[*]}" | median)
  m_lc=$(echo "${lc[*]}" | median); m_ac=$(echo "${ac[*]}" | median)
  awk -v n="$n" -v ld="$load" -v la="$m_la" -v lt="$m_lt" -v aa="$m_aa" -v at="$m_at" -v d="$duration" -v lc="$m_lc" -v ac="$m_ac" 'BEGIN {
    lsum = la + lt; asum = aa + at
    printf "| %d | %s | %.1f s | %.1f s | **%.1f s** | %.1f s | %.1f s | %.1f s | **%.1f s** | %.1f s | %.1f× | %.1f× |\n",
      n, ld, la, lt, lsum, lc, aa, at, asum, ac, asum / lsum, (asum - d) / (lsum - d) }'
done
