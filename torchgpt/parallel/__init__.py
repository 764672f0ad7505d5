"""Parallelism: the job's dimensions and DeviceMesh (dims) and what is applied to a plain model
on it: AC, compile, FSDP2 / HSDP / DDP (parallelize)."""
