#!/usr/bin/env bash
# A large lab for the apply/teardown benchmark only: N metal hosts, each a network namespace with
# its own sshd (key-only root login) on its own address, and an inventory for them.
#
#   bench/apply/lab.sh up N     makes hosts b1..bN and writes $BENCH_DIR/inventory/hosts.yaml
#   bench/apply/lab.sh down     removes exactly what `up` made
#
# It never touches the standard lab (ci/lab): its own bridge (lpbbr0), subnet (10.79.0.0/24),
# namespace prefix (lpb-), link prefix (lpbm-) and state directory ($LATPLAN_STATE/bench-apply).
# Like ci/lab, `up` records everything it makes in $BENCH_DIR/made and `down` undoes that list.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=ci/lib.sh
. "$repo/ci/lib.sh"

BENCH_DIR=$LATPLAN_STATE/bench-apply
MADE=$BENCH_DIR/made
LOGS=$BENCH_DIR/log
BRIDGE=lpbbr0
NET=10.79.0
MANAGER_ADDR=$NET.1/24
MAX_HOSTS=200

made() { printf '%s\n' "$*" >>"$MADE"; }
alive() { kill -0 "$1" 2>/dev/null; }
addr_of() { echo "$NET.$((10 + $1))"; }

# Runs a long-lived child without our descriptors (a caller's pipe would never see EOF).
spawn() {
  local f fd
  for f in /proc/"$BASHPID"/fd/*; do
    fd=${f##*/}
    if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
  exec </dev/null "$@"
}

stop_netns_pids() {
  local ns=$1 pids p left
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  for _ in $(seq 50); do
    left=0
    for p in $(ip netns pids "$ns" 2>/dev/null); do alive "$p" && left=1; done
    [ $left = 0 ] && return 0
    sleep 0.05
  done
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  # shellcheck disable=SC2086
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
}

start_sshd() {
  local i=$1 ns=$2 addr=$3 d=$BENCH_DIR/sshd/b$1
  mkdir -p "$d"
  rm -f "$d/ssh_host_ed25519_key" "$d/ssh_host_ed25519_key.pub"
  ssh-keygen -q -t ed25519 -N '' -C "latplan-bench-b$i" -f "$d/ssh_host_ed25519_key"
  cat >"$d/sshd_config" <<CONF
# benchmark host b$i (made by bench/apply/lab.sh up)
ListenAddress $addr
Port 22
HostKey $d/ssh_host_ed25519_key
PidFile $d/sshd.pid
AuthorizedKeysFile $BENCH_DIR/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
CONF
  printf '%s %s\n' "$addr" "$(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >>"$BENCH_DIR/known_hosts"
  # As in ci/lab: root's ~/.bashrc (pyenv) hidden, tracefs and bpffs on the namespace's own /sys.
  # shellcheck disable=SC2016
  spawn ip netns exec "$ns" unshare -m --propagation private sh -c '
    set -e
    if [ -e /root/.bashrc ]; then mount --bind "$1" /root/.bashrc; fi
    mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
    exec /usr/sbin/sshd -f "$2" -E "$3"' sh "$BENCH_DIR/empty_bashrc" "$d/sshd_config" "$LOGS/sshd-b$i.log" &
}

write_inventory() {
  local n=$1 i inv=$BENCH_DIR/inventory
  mkdir -p "$inv"
  {
    echo "# Made by bench/apply/lab.sh up $n: $n metal hosts, one network namespace each."
    echo "all:"
    echo "  vars:"
    # Masters kept 60 s after each command, as Ansible's ControlPersist=60s (bench/apply/run.sh).
    echo "    ssh: {user: root, identity_file: $BENCH_DIR/id_ed25519, known_hosts_file: $BENCH_DIR/known_hosts, control_persist: 60}"
    echo "    session:"
    echo "      sampling: {size: 65536, ports: [5201]}"
    echo "      store: sqlite://$BENCH_DIR/latplan.db"
    echo "  hosts:"
    for i in $(seq "$n"); do
      echo "    b$i: {address: $(addr_of "$i"), install_dir: $BENCH_DIR/hosts/b$i, interfaces: [mgmt0]}"
    done
  } >"$inv/hosts.yaml"
  # The same hosts for Ansible.
  {
    echo "[bench]"
    for i in $(seq "$n"); do echo "b$i ansible_host=$(addr_of "$i") install_dir=$BENCH_DIR/ansible/b$i"; done
    echo "[bench:vars]"
    echo "ansible_user=root"
    echo "ansible_ssh_private_key_file=$BENCH_DIR/id_ed25519"
  } >"$inv/ansible.ini"
}

cmd_up() {
  local n=$1 i ns addr
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le $MAX_HOSTS ] || die "usage: lab.sh up N (1..$MAX_HOSTS)"
  [ -f "$MADE" ] && cmd_down
  mkdir -p "$BENCH_DIR" "$LOGS"
  : >"$MADE"
  made dir "$BENCH_DIR/sshd"
  made dir "$BENCH_DIR/inventory"
  made dir "$BENCH_DIR/hosts"
  made dir "$BENCH_DIR/ansible"
  made dir "$BENCH_DIR/cp"   # Ansible's ControlPath sockets (bench/apply/run.sh)
  made dir "$LOGS"
  mkdir -p /run/sshd
  rm -f "$BENCH_DIR/id_ed25519" "$BENCH_DIR/id_ed25519.pub"
  ssh-keygen -q -t ed25519 -N '' -C latplan-bench-client -f "$BENCH_DIR/id_ed25519"
  cp "$BENCH_DIR/id_ed25519.pub" "$BENCH_DIR/authorized_keys"
  : >"$BENCH_DIR/known_hosts"
  : >"$BENCH_DIR/empty_bashrc"
  for f in id_ed25519 id_ed25519.pub authorized_keys known_hosts empty_bashrc latplan.db; do made file "$BENCH_DIR/$f"; done

  log "bench lab: bridge $BRIDGE ($MANAGER_ADDR), $n hosts"
  ip link add "$BRIDGE" type bridge
  made link "$BRIDGE"
  sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1" >/dev/null
  ip addr add "$MANAGER_ADDR" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq "$n"); do
    ns=lpb-b$i
    addr=$(addr_of "$i")
    ip netns add "$ns"
    made netns "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip link add "lpbm-b$i" type veth peer name mgmt0 netns "$ns"
    made link "lpbm-b$i"
    sysctl -qw "net.ipv6.conf.lpbm-b$i.disable_ipv6=1" >/dev/null
    ip link set "lpbm-b$i" master "$BRIDGE" up
    ip -n "$ns" addr add "$addr/24" dev mgmt0
    ip -n "$ns" link set mgmt0 up
    ip -n "$ns" route add default via "$NET.1"
    start_sshd "$i" "$ns" "$addr"
  done
  for i in $(seq "$n"); do
    addr=$(addr_of "$i")
    for _ in $(seq 200); do
      ssh -F /dev/null -i "$BENCH_DIR/id_ed25519" -o UserKnownHostsFile="$BENCH_DIR/known_hosts" \
        -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=3 "root@$addr" true \
        </dev/null >/dev/null 2>&1 && continue 2
      sleep 0.1
    done
    die "sshd of b$i ($addr) does not answer (see $LOGS/sshd-b$i.log)"
  done
  write_inventory "$n"
  log "bench lab: up; inventory $BENCH_DIR/inventory"
}

cmd_down() {
  [ -f "$MADE" ] || return 0
  local kind arg
  # Processes first (sshd and what runs under it keep namespaces alive), then the rest in reverse.
  while read -r kind arg; do
    [ "$kind" = netns ] && stop_netns_pids "$arg"
  done < <(tac "$MADE")
  while read -r kind arg; do
    case $kind in
      netns) ip netns del "$arg" 2>/dev/null || true ;;
      link) ip link del "$arg" 2>/dev/null || true ;;
      file) rm -f "$arg" ;;
      dir) rm -rf --one-file-system "$arg" ;;
      *) log "bench lab: unknown record '$kind $arg'" ;;
    esac
  done < <(tac "$MADE")
  rm -f "$MADE"
  rmdir "$BENCH_DIR" 2>/dev/null || true
  log "bench lab: down"
}

need_root
case ${1:-} in
  up) cmd_up "${2:-}" ;;
  down) cmd_down ;;
  *) die "usage: $0 up N | down" ;;
esac
