#!/usr/bin/env bash
# Stands in for `srun` in tests that run without a cluster: starts
# --ntasks copies of the program on this host, with the variables srun
# gives its tasks, and waits for them. `--partition=refused` fails as srun
# does for a partition that does not exist.
#
# For tests that play a worker themselves: `--fake-spy=FILE` writes the
# port and key the workers are given to FILE (whole, by a rename), and
# `--fake-real=N` starts only N of the tasks (a stand-in process for
# each of the others). `--fake-abandon` exits with an error once the
# tasks are started, leaving them running (holding its standard error).
n=1
abandon=
real=
spy=
prog=
for a in "$@"; do
  case $a in
    --ntasks=*) n=${a#--ntasks=} ;;
    --fake-real=*) real=${a#--fake-real=} ;;
    --fake-spy=*) spy=${a#--fake-spy=} ;;
    --fake-abandon) abandon=1 ;;
    --partition=refused)
      echo "srun: error: invalid partition specified: refused" >&2
      echo "srun: error: Unable to allocate resources: Invalid partition name specified" >&2
      exit 1 ;;
    -*) ;;
    *) prog=$a ;;
  esac
done
if [ -n "$spy" ]; then
  echo "$__MULTIPROC_CLUSTER_PORT $__MULTIPROC_CLUSTER_KEY" >"$spy.tmp"
  mv "$spy.tmp" "$spy"
fi
pids=()
for i in $(seq 0 $((${real:-$n} - 1))); do
  SLURM_PROCID=$i SLURM_LAUNCH_NODE_IPADDR=127.0.0.1 SLURM_JOB_ID=fake SLURM_STEP_ID=0 \
    "$prog" &
  pids+=($!)
done
# The tasks the test plays: stand-ins that end when told to, or when the
# test process does.
for _ in $(seq $((${real:-$n} + 1)) "$n"); do
  tail --pid=$PPID -f /dev/null &
  pids+=($!)
done
if [ -n "$abandon" ]; then
  echo "srun: error: lost contact with the tasks" >&2
  exit 1
fi
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
wait
