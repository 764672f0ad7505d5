"""A run's lifecycle around the loop: launch (torchrun), preflight checks, the run-folder lock,
stop requests and preemption, and the run files (run_info.json, last_exit.json)."""
