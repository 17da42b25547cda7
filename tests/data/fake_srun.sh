#!/usr/bin/env bash
# Stands in for `srun` in tests that run without a cluster: starts
# --ntasks copies of the program on this host, with the variables srun
# gives its tasks, and waits for them. `--partition=refused` fails as srun
# does for a partition that does not exist.
n=1
prog=
for a in "$@"; do
  case $a in
    --ntasks=*) n=${a#--ntasks=} ;;
    --partition=refused)
      echo "srun: error: invalid partition specified: refused" >&2
      echo "srun: error: Unable to allocate resources: Invalid partition name specified" >&2
      exit 1 ;;
    -*) ;;
    *) prog=$a ;;
  esac
done
pids=()
for i in $(seq 0 $((n - 1))); do
  SLURM_PROCID=$i SLURM_LAUNCH_NODE_IPADDR=127.0.0.1 SLURM_JOB_ID=fake SLURM_STEP_ID=0 \
    "$prog" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
wait
