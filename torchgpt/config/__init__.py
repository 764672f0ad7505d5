"""The job's configuration: the dataclasses of every TOML section (job_config) and the loader
that merges a TOML file with `--section.key value` overrides and validates it (manager)."""
