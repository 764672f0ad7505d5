"""The bottom layer, importing nothing else of torchgpt: device facts (hardware), progress
lines for long loops, and the provenance of a number (machine, versions, commit)."""
