"""Training: the loop (trainer) and its components (callbacks), metrics, auto sizing and the
in-training harness eval; the step itself is torchgpt.step."""
