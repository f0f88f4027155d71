#!/usr/bin/env bash
# Precision and XLA on whatever accelerator this machine has: lists the devices (nvidia-smi,
# a Cloud TPU VM's /dev/accel* or /dev/vfio), then runs bench/device_check.py (float32,
# mixed precision and XLA step times, interleaved, and their numerics against float32) and
# keeps its output in a log file. Exit code: device_check.py's (1 when a numerics check
# fails). Arguments go to device_check.py, e.g.:
#
#   bench/device_check.sh                        # sizes for the device found
#   bench/device_check.sh --small                # CPU-sized models on any device
#   bench/device_check.sh --tpu local            # on a Cloud TPU VM
#   bench/device_check.sh --include-xla-on-cpu   # also time XLA on a CPU
#
# PYTHON picks the interpreter (default: python3 on PATH, i.e. the environment tftune is in);
# LOG the log file (default: device_check-<host>-<UTC time>.log in the current directory).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
log="${LOG:-device_check-$(hostname)-$(date -u +%Y%m%dT%H%M%SZ).log}"

{
  echo "# bench/device_check.sh on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "# tftune commit: $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "# GPUs (nvidia-smi):"
    nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version --format=csv,noheader \
      | sed 's/^/#   /' || true
  fi
  if ls /dev/accel* >/dev/null 2>&1 || ls /dev/vfio/[0-9]* >/dev/null 2>&1; then
    echo "# TPU chips: $(ls -d /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | tr '\n' ' ')"
  fi
  echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
  "$python" "$here/device_check.py" "$@"
} 2> >(grep -v -e '^WARNING: All log messages' -e '^I0000' -e '^W0000' -e 'cuda drivers' >&2) \
  | tee "$log"
status=${PIPESTATUS[0]}
echo "log: $log"
exit "$status"
