"""Device choice and peak memory for the flow benchmarks' worker processes (not a benchmark itself).

Imports nothing heavy at module level: the workers set their environment (threads, OpenMP wait
policy) before torch loads.

Peak memory = what the measured code adds at its peak over what the process held when measuring
started:

* CPU: the peak resident set size (VmHWM, reset to the current RSS through /proc/self/clear_refs)
  minus the resident size at that moment. It counts everything the process touched, allocator caching
  and freed-but-not-returned pages included, i.e. what the machine must really provide; tracemalloc
  would not see torch's allocations at all.
* CUDA: ``torch.cuda.max_memory_allocated`` (reset at the start) minus the memory allocated then: the
  tensors only (the caching allocator's reserve is not counted).
"""

from __future__ import annotations


def check_device(device: str, script: str) -> str:
    """`cpu` or a CUDA device (`cuda`, `cuda:1`); a CUDA device must exist (fails with a clear message)."""
    if device == "cpu":
        return device
    if not (device == "cuda" or device.startswith("cuda:")):
        raise SystemExit(f"{script}: --device must be cpu or cuda[:N], got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"{script}: --device {device}: no CUDA device (torch.cuda.is_available() is False)")
    return device


def sync(device: str) -> None:
    """Wait for the GPU's queued work (timings on CUDA would otherwise measure only the launches)."""
    if device != "cpu":
        import torch

        torch.cuda.synchronize(device)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """`start()` before the measured code, `peak_mb()` after it (NaN where the peak cannot be reset)."""

    def __init__(self, device: str):
        self.device = device
        self.base_kb = 0.0
        self.reset = False

    def start(self) -> None:
        if self.device != "cpu":
            import torch

            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_kb, self.reset = torch.cuda.memory_allocated(self.device) / 1024, True
            return
        self.base_kb = _status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS
            self.reset = True
        except OSError:
            self.reset = False

    def peak_mb(self) -> float:
        if not self.reset:
            return float("nan")
        if self.device != "cpu":
            import torch

            sync(self.device)
            peak_kb = torch.cuda.max_memory_allocated(self.device) / 1024
        else:
            peak_kb = _status_kb("VmHWM")
        return (peak_kb - self.base_kb) / 1024
