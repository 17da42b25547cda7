#!/usr/bin/env bash
# Lose or bring back one emulated node of a cluster that up.sh started with
# SLURM_NETNS=1, as a test of a lost node needs:
#   bash node.sh lose I      # its link goes down first (nothing it says reaches
#                            # this host any more: no FIN, no RST), then every
#                            # process in its namespace is killed (slurmd,
#                            # slurmstepd, tasks), as if it lost power
#   bash node.sh restore I   # link up, slurmd started again, node resumed
set -euo pipefail
D=${SLURM_TEST_DIR:-/tmp/slurm-test}
. "$D/env"
action=${1:?lose or restore}
i=${2:?node number}
ns=mpslurm-n$i
case $action in
  lose)
    ip link set "vmpslurm-n$i" down
    for p in $(ip netns pids "$ns"); do kill -9 "$p" 2>/dev/null || true; done
    ;;
  restore)
    ip link set "vmpslurm-n$i" up
    nsenter --net="/run/netns/$ns" unshare --uts sh -c \
      "hostname n$i; exec /usr/sbin/slurmd -f '$SLURM_CONF' -N n$i"
    scontrol update nodename="n$i" state=resume 2>/dev/null || true
    ;;
  *) echo "node.sh: lose or restore, not $action" >&2; exit 2 ;;
esac
