# What the Slurm tests share about jobs (source it after tests/e2e/common.sh). Slurm's clients run with the prefix
# in the array slurm_client: empty on this machine; the simulated cluster's test sets it to run them on node1.
slurm_client=(${slurm_client[@]+"${slurm_client[@]}"})
job_state() { "${slurm_client[@]}" scontrol show job "$1" | grep -o "JobState=[A-Z_]*" | cut -d= -f2; }
job_reason() { "${slurm_client[@]}" scontrol show job "$1" | grep -o "Reason=[^ ]*" | cut -d= -f2; }
# wait_for_job_end JOB SECONDS: until the job has ended (or SECONDS have passed); sets $state to its last state.
wait_for_job_end() {
  state=
  for _ in $(seq $(($2 * 2))); do
    state=$(job_state "$1")
    case $state in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL) return 0 ;; esac
    sleep 0.5
  done
}
