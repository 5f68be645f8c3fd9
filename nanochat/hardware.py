"""
What a device can do at most, for the benchmarks: peak memory bandwidth (the limit of batch-1
decode, which reads every weight once per token) and peak memory used so far. Peak FLOPs for MFU
live in common.PEAK_FLOPS.
"""
import resource
import sys

import torch

# Peak DRAM bandwidth in bytes/s, from the vendors' data sheets. Matched against
# torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB",
# "NVIDIA GeForce RTX 3090"): the first row whose substrings all occur in the name wins, so the
# specific variants come before the generic ones.
PEAK_BANDWIDTH = [
    (("B200",), 8.0e12),
    (("GH200",), 4.0e12),
    (("H200",), 4.8e12),
    (("H100", "NVL"), 3.9e12),
    (("H100", "PCIe"), 2.0e12),
    (("H100",), 3.35e12),       # SXM, HBM3
    (("H800", "PCIe"), 2.0e12),
    (("H800",), 3.35e12),
    (("A100", "80GB", "PCIe"), 1.935e12),
    (("A100", "80GB"), 2.039e12),
    (("A100",), 1.555e12),      # 40 GB, SXM or PCIe
    (("A800", "80GB"), 2.039e12),
    (("A800",), 1.555e12),
    (("A40",), 0.696e12),
    (("A30",), 0.933e12),
    (("A10G",), 0.6e12),
    (("A10",), 0.6e12),
    (("L40S",), 0.864e12),
    (("L40",), 0.864e12),
    (("L4",), 0.3e12),
    (("V100",), 0.9e12),
    (("T4",), 0.32e12),
    (("RTX 6000 Ada",), 0.96e12),
    (("RTX A6000",), 0.768e12),
    (("RTX A5000",), 0.768e12),
    (("RTX A4000",), 0.448e12),
    (("RTX 5090",), 1.792e12),
    (("RTX 5080",), 0.96e12),
    (("RTX 4090",), 1.008e12),
    (("RTX 4080",), 0.717e12),
    (("RTX 4070",), 0.504e12),
    (("RTX 3090 Ti",), 1.008e12),
    (("RTX 3090",), 0.936e12),
    (("RTX 3080 Ti",), 0.912e12),
    (("RTX 3080",), 0.76e12),
    (("RTX 3070",), 0.448e12),
    (("RTX 3060",), 0.36e12),
]


def lookup_bandwidth(name):
    """Peak bandwidth in bytes/s for a device name, or None when the name is not in the table."""
    for keys, bw in PEAK_BANDWIDTH:
        if all(k in name for k in keys):
            return bw
    return None


def get_peak_bandwidth(device):
    """Peak memory bandwidth of a CUDA device in bytes/s; None on CPU/MPS or for an unknown GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return lookup_bandwidth(torch.cuda.get_device_name(device))


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        import platform
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device.type


def reset_peak_memory(device):
    """Start a new peak-memory measurement (CUDA: also return cached blocks, so 'reserved' counts only what follows)."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device):
    """
    Peak memory in bytes: on CUDA (allocated by tensors, reserved by the caching allocator) since
    the last reset; on CPU the process's peak resident set (ru_maxrss), which includes Python and
    torch themselves, so only differences between runs mean much.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return {"allocated": torch.cuda.max_memory_allocated(device), "reserved": torch.cuda.max_memory_reserved(device)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"process_rss": rss}
