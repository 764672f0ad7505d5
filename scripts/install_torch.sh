#!/usr/bin/env bash
# Install torch into a venv, the build chosen for this machine (called by `make setup`).
#
#   scripts/install_torch.sh VENV_PYTHON "TORCH_SPEC" TORCH_INDEX
#
# TORCH_SPEC is split into words, so it may carry pip options of its own
# ("torch==2.11.0 --index-url https://download.pytorch.org/whl/cu126").
# TORCH_INDEX:
#   auto  a GPU (nvidia-smi lists one): the spec as given, from PyPI (a CUDA build);
#         no GPU: the CPU build of the same version, "torch==X+cpu", from pip's configured
#         find-links / indexes if one has it (a local wheel cache), else the PyTorch CPU index
#   pypi  the spec as given, from pip's configured indexes
#   URL   the spec as given, from that index only (--index-url URL)
set -euo pipefail
py=$1
read -r -a spec <<<"$2"
index=${3:-auto}
pip=("$py" -m pip install -q)
cpu_index=https://download.pytorch.org/whl/cpu

case $index in
  pypi) exec "${pip[@]}" "${spec[@]}" ;;
  auto) ;;
  *) exec "${pip[@]}" --index-url "$index" "${spec[@]}" ;;
esac

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
  echo "install_torch: a GPU is present: ${spec[*]} from PyPI (a CUDA build)"
  exec "${pip[@]}" "${spec[@]}"
fi
# No GPU: the CPU build. Only an exact pin (torch==X, no local label, no options) is rewritten.
if [[ ${#spec[@]} -ne 1 || ! ${spec[0]} =~ ^torch==[0-9][0-9.]*$ ]]; then
  echo "install_torch: no GPU, but TORCH_SPEC='$2' is not an exact torch==X pin: installed as given"
  exec "${pip[@]}" "${spec[@]}"
fi
cpu_spec="${spec[0]}+cpu"
# pip's own configuration first: a find-links folder or local index holding the CPU wheel
# (PyPI has no +cpu builds, so this fails at once where none is configured); torch's
# dependencies come from the configured indexes either way.
if "${pip[@]}" "$cpu_spec" 2>/dev/null; then
  echo "install_torch: no GPU: $cpu_spec (from pip's configured find-links / indexes)"
  exit 0
fi
echo "install_torch: no GPU: $cpu_spec from $cpu_index (TORCH_INDEX=pypi for PyPI's CUDA build)"
exec "${pip[@]}" --extra-index-url "$cpu_index" "$cpu_spec"
