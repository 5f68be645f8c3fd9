"""
Things every script needs: the base directory, device and dtype choice, rank-0 printing,
torchrun (DDP) setup and teardown, argument parsing with dashed aliases, and the peak-FLOPs
table used for MFU.
"""
import argparse
import os
import sys

import torch
import torch.distributed as dist

# -----------------------------------------------------------------------------
# paths

def get_base_dir():
    """All artifacts live under $NANOCHAT_BASE_DIR (default ~/.cache/nanochat)."""
    base = os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    os.makedirs(base, exist_ok=True)
    return base

# -----------------------------------------------------------------------------
# logging

def get_rank():
    return int(os.environ.get("RANK", 0))

def print0(*args, **kwargs):
    """print, but only on rank 0, flushed so progress shows up in logs and pipes."""
    if get_rank() == 0:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)

class DummyWandb:
    """Stand-in for wandb when logging is off (--run dummy): same calls, does nothing."""
    def log(self, *args, **kwargs):
        pass
    def finish(self):
        pass

def init_wandb(run, project, config, master_process=True):
    if run == "dummy" or not master_process:
        return DummyWandb()
    try:
        import wandb
    except ImportError:
        die("--run was given but wandb is not installed: pip install wandb, or use --run dummy")
    return wandb.init(project=project, name=run, config=config)

def die(msg, code=1):
    """Exit with a one-line error (no traceback) for problems the user can fix."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)

class UserError(Exception):
    """An error caused by bad input or missing files; scripts print it as one line."""

# -----------------------------------------------------------------------------
# arguments

class ArgumentParser(argparse.ArgumentParser):
    """argparse that also accepts --model-dim wherever --model_dim is defined (groups included)."""
    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        known = set(self._option_string_actions)
        def underscored(arg):
            if not arg.startswith("--"):
                return arg
            name, eq, value = arg.partition("=")
            alt = "--" + name[2:].replace("-", "_")
            return alt + eq + value if name not in known and alt in known else arg
        return super().parse_known_args([underscored(a) for a in args], namespace)

def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if v.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")

# -----------------------------------------------------------------------------
# device and precision

def autodetect_device_type():
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"

def get_compute_dtype(device_type, precision="auto"):
    """
    The dtype for autocast. 'auto': bf16 where the device supports it (CUDA Ampere+), fp16 on
    older CUDA (use a GradScaler), fp32 on CPU and MPS.
    """
    if precision == "auto":
        if device_type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    if device_type == "cpu" and dtype == torch.float16:
        raise UserError("fp16 autocast is for CUDA; use --precision bf16 or fp32 on CPU")
    return dtype

def autocast_ctx(device_type, dtype):
    """Autocast context for mixed precision; a no-op for fp32."""
    import contextlib
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.amp.autocast(device_type=device_type, dtype=dtype)

def synchronize(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()
    elif device_type == "mps":
        torch.mps.synchronize()

def get_max_memory(device_type):
    """Peak memory reserved so far in bytes (CUDA only, else 0)."""
    return torch.cuda.max_memory_reserved() if device_type == "cuda" else 0

# -----------------------------------------------------------------------------
# distributed

def is_ddp():
    return int(os.environ.get("RANK", -1)) != -1 and "WORLD_SIZE" in os.environ

def get_dist_info():
    """(ddp, rank, local_rank, world_size)"""
    if is_ddp():
        return True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1

def tune_cpu_allocator(threshold=1 << 30):
    """
    On a CPU, training frees and reallocates the same multi-megabyte activation buffers every
    step; glibc serves blocks that large with mmap and gives them back with munmap, so every step
    page-faults them in again (and trims the heap). Raising the mmap and trim thresholds keeps
    them in the heap: about 8% faster CPU steps, same losses (dev/LOG.md). Returns True when glibc took it;
    elsewhere (macOS, musl) it does nothing. NANOCHAT_MALLOC_TUNE=0 turns it off.
    """
    if os.environ.get("NANOCHAT_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1 and mallopt(M_TRIM_THRESHOLD, threshold) == 1

def compute_init(device_type=""):
    """
    Pick the device, seed, and under torchrun set up the process group (nccl on CUDA, gloo on CPU).
    Returns (ddp, rank, local_rank, world_size, device).
    """
    device_type = device_type or autodetect_device_type()
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device_type cuda but no CUDA GPU is available")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device_type mps but MPS is not available")
    if device_type == "cpu":
        tune_cpu_allocator()
    torch.manual_seed(42)
    if device_type == "cuda":
        torch.cuda.manual_seed(42)
        torch.backends.cuda.matmul.allow_tf32 = True  # tf32 for the fp32 matmuls that remain
        torch.backends.cudnn.allow_tf32 = True
    ddp, rank, local_rank, world_size = get_dist_info()
    if ddp:
        if device_type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            device = torch.device(device_type)
            dist.init_process_group(backend="gloo")
        dist.barrier()
    else:
        device = torch.device(device_type)
    return ddp, rank, local_rank, world_size, device

def wrap_ddp(model, device):
    """
    DistributedDataParallel around the model. The only buffers are the rotary tables, the same on
    every rank, so they are not broadcast before each forward (the flag was renamed in newer torch).
    """
    import inspect
    from torch.nn.parallel import DistributedDataParallel as DDP
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
    device = torch.device(device)
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **{no_sync: False})

def compute_cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

# -----------------------------------------------------------------------------
# peak FLOPs for MFU

# Dense bf16/fp16 tensor-core peak per GPU, from the vendors' data sheets (no sparsity).
# Matched against torch.cuda.get_device_name(); longest key first so "H100 PCIe" beats "H100".
PEAK_FLOPS = {
    "B200": 2.25e15, "H200": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
    "H800": 989e12, "GH200": 989e12, "A100": 312e12, "A800": 312e12, "A40": 149.7e12, "A30": 165e12,
    "A10G": 70e12, "A10": 125e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "V100": 125e12, "T4": 65e12,
    "RTX 6000 Ada": 364e12, "RTX A6000": 154.8e12, "RTX A5000": 111e12, "RTX A4000": 76.7e12,
    "RTX 5090": 209.5e12, "RTX 5080": 112.6e12, "RTX 4090": 165.2e12, "RTX 4080": 97.5e12,
    "RTX 4070": 58.3e12, "RTX 3090 Ti": 80e12, "RTX 3090": 71e12, "RTX 3080 Ti": 68.2e12,
    "RTX 3080": 59.5e12, "RTX 3070": 40.6e12, "RTX 3060": 25.6e12,
}

def get_peak_flops(device):
    """Peak dense bf16 FLOP/s of a device, or None when unknown (then MFU is not reported)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_FLOPS[key]
    return None
