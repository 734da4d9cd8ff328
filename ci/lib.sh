# Shared helpers of the ci/ scripts. Sourced, never run.
# Where lasting tools (bpf-linker) live; outside the work tree so a fresh clone reuses them.
: "${LATPLAN_TOOLS:=/var/cache/latplan-tools}"
# Where the lab and services keep PIDs, keys and logs; gitignored when inside the tree.
: "${LATPLAN_STATE:=/var/lib/latplan-ci}"
export LATPLAN_TOOLS LATPLAN_STATE
export PATH="$LATPLAN_TOOLS/bpf-linker/bin:$HOME/.cargo/bin:$PATH"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (the lab creates namespaces and loads eBPF)"; }
mariadb_running() { mariadb-admin -h 127.0.0.1 -P 3306 -uroot ping >/dev/null 2>&1 || mariadb-admin ping >/dev/null 2>&1; }

# Prints one closing line "N passed, N failed" over every cargo test binary in a log.
summarise_tests() {
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
       END { printf "%d passed, %d failed\n", p, f }' "$1"
}
