"""Process set-up shared by every stage: threads, device, seeds, atomic files, checksums, progress lines."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from dfnas.errors import REMAKE, DfnasError, Unwritable, damaged, unwritable, write_failure


def set_threads(n: int) -> None:
    """Use exactly ``n`` CPU threads in this process (torch intra-op and OpenMP).

    Oversubscribing cores is ruinous for the small convolutions of NAS: every rule declares
    its ``threads`` and the module calls this first.
    """
    import torch

    n = max(1, int(n))
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # may only be set once per process
        torch.set_num_interop_threads(1)


# Set for a job that was given GPUs: lists of device ids (SLURM, or by hand), and SLURM's count.
GPU_ID_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
GPU_COUNT_VARIABLE = "SLURM_GPUS_ON_NODE"


def allocated_gpus() -> str | None:
    """``VARIABLE=value`` of the first variable that says this job was given GPUs, or None."""
    for var in GPU_ID_VARIABLES:
        value = os.environ.get(var, "").strip()
        if value and value not in ("-1", "NoDevFiles"):
            return f"{var}={value}"
    count = os.environ.get(GPU_COUNT_VARIABLE, "").strip()
    return f"{GPU_COUNT_VARIABLE}={count}" if count.isdigit() and int(count) > 0 else None


# Where the jobs of one machine claim their GPUs (one lock file per device).
GPU_LOCK_DIR_VARIABLE = "DFNAS_GPU_LOCK_DIR"
_claimed_gpu: list = []  # the open lock file of this process's GPU, held until it exits
GPU_WAIT_SECONDS = 600.0  # how long a job waits for a GPU when every one is held


def gpu_lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"dfnas-gpus-{os.getuid()}"
    return Path(os.environ.get(GPU_LOCK_DIR_VARIABLE) or default)


def claim_gpu(names: list[str], wait: float | None = None, log=None) -> int:
    """The index of a GPU (of those visible, named ``names``: their UUIDs, so that jobs seeing the
    devices in another order or subset agree) that no other dfnas process of this machine holds,
    claimed for the rest of this process's life (an exclusive ``flock`` on ``<lock dir>/<name>.lock``,
    released by the kernel when the process ends, however it ends). Snakemake's ``gpu`` resource
    (``--resources gpu=N``) keeps at most N GPU jobs running, so one is normally free; when none is,
    the job waits up to ``wait`` seconds (`GPU_WAIT_SECONDS`) for one."""
    import fcntl

    wait = GPU_WAIT_SECONDS if wait is None else wait

    if _claimed_gpu:
        return _claimed_gpu[0][0]
    folder = gpu_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        for i, name in enumerate(names):
            fh = open(folder / f"{name}.lock", "a")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            _claimed_gpu.append((i, fh))
            return i
        if time.monotonic() >= deadline:
            raise DfnasError(f"all {len(names)} GPUs of this machine stayed held by other dfnas jobs for {wait:.0f} s "
                             f"(locks in {folder}); run Snakemake with --resources gpu={len(names)}")
        if log is not None:
            log(f"all {len(names)} GPUs are held by other dfnas jobs; waiting for one")
            log = None
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def world_from_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables; None outside torchrun or for one
    process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    except (KeyError, ValueError) as exc:
        raise DfnasError(f"torchrun's RANK / WORLD_SIZE / LOCAL_RANK are incomplete or not numbers ({exc}); "
                         "start several processes with torchrun --nproc_per_node N") from None


def cuda_device():
    """The CUDA device of this job: the one it sees, or, where it sees several (a workstation, or an
    allocation of several GPUs shared by parallel jobs), one that no other dfnas job holds
    (`claim_gpu`); in a torchrun job, each rank claims one the same way."""
    import torch

    count = torch.cuda.device_count()
    index = 0
    world = world_from_env()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if world is not None else 1
    if local_ranks > count:
        raise DfnasError(f"torchrun started {local_ranks} processes on this node but the job sees {count} GPUs; "
                         "start at most as many processes per node as the job has GPUs")
    if count > 1:  # each rank of a torchrun job is a process of its own: the claims keep their GPUs apart
        names = [f"gpu-{torch.cuda.get_device_properties(i).uuid}" for i in range(count)]
        index = claim_gpu(names, log=print)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def resolve_device(name: str = "auto"):
    """``auto`` picks CUDA when present, else CPU, and fails when the job was given GPUs that torch
    cannot see (a CPU-only build of torch, say); ``cuda`` is a free GPU of this machine
    (`cuda_device`); ``cpu`` and ``cuda:N`` are taken as given."""
    import torch

    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            device = cuda_device()
            configure_backends(device)
            return device
        given = allocated_gpus()
        if given:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DfnasError(f"this job was given GPUs ({given}) but torch {torch.__version__} ({build}) "
                             "sees none; install a CUDA build of torch (README: Running on a SLURM cluster), or set "
                             "device: cpu")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DfnasError(f"config key 'device': {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DfnasError(f"config key 'device': {name!r} was asked for but this machine has no CUDA device")
    if device.type == "cuda" and device.index is None:
        device = cuda_device()
    configure_backends(device)
    return device


def seed_everything(seed: int) -> None:
    """Fix Python, NumPy and torch draws; on the CPU a seed then gives the same files."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derived_seed(*parts) -> int:
    """A 63-bit seed drawn from ``parts`` (the run seed and names): independent streams for every
    shard, round, split and arm, the same on every machine."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def configure_backends(device) -> None:
    """GPU-only speed-ups switch on by device (cuDNN autotuning, TF32 matrix products); the CPU
    path stays deterministic."""
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(name: str, device):
    """The autocast dtype for config key ``precision``: ``bf16`` -> torch.bfloat16, ``fp32`` -> None
    (float32; on CUDA its matrix products and convolutions use TF32, `configure_backends`), ``auto``
    -> bfloat16 on a CUDA device that computes it natively, else float32 (the CPU: its results stay
    bit-for-bit reproducible)."""
    import torch

    if name not in PRECISIONS:
        raise DfnasError(f"config key 'precision': {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "bf16":
        return torch.bfloat16
    if name == "auto" and torch.device(device).type == "cuda" and bf16_native():
        return torch.bfloat16
    return None


def precision_name(dtype) -> str:
    """``bf16`` or ``fp32``: how outputs and checkpoints record a resolved precision."""
    return "fp32" if dtype is None else "bf16"


def bf16_native() -> bool:
    """Whether the current CUDA device computes in bfloat16 natively (compute capability 8.0 on:
    A100, H100, ...); older cards emulate it, slower than float32."""
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3
        return torch.cuda.get_device_capability()[0] >= 8


def autocast(device, dtype):
    """``torch.autocast`` in ``dtype`` on ``device``, or nothing when ``dtype`` is None (float32)."""
    import torch

    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def autocast_forward(model, device, dtype):
    """Run ``model``'s forward under `autocast` in ``dtype`` from now on, its outputs (a tensor or a
    tuple of them) returned in float32, so that every caller (weight and architecture steps,
    evaluation, path scoring) gets the same arithmetic and backward runs outside the autocast region
    as PyTorch advises. Parameters, state dict and optimizer state are untouched; nothing changes
    when ``dtype`` is None. Returns ``model``."""
    if dtype is None:
        return model
    forward = model.forward

    def forward_in_precision(*args, **kwargs):
        with autocast(device, dtype):
            out = forward(*args, **kwargs)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    model.forward = forward_in_precision
    return model


def sha256_file(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_state_dict(state_dict) -> str:
    """A checksum of a model's weights that does not depend on how the file was serialized."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def config_hash(obj) -> str:
    """Short stable hash of a JSON-able config section, recorded in every output."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_writable(folder, need_bytes: int = 0) -> None:
    """Make ``folder`` and check that a file can be created in it and, with ``need_bytes``, that its
    file system has that much free space: one line naming the folder otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dfnas-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise unwritable(folder, exc) from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise DfnasError(f"{folder}: {size_text(free)} free, this job writes up to {size_text(need_bytes)}; "
                         "free space and rerun")


def size_text(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at or above 1 (``1.5 MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            break
        n /= 1024
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or an error leaves no half-written output behind; a write that fails for space or
    permissions is one line (`dfnas.errors.Unwritable`) that names ``path``, not the temporary file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise unwritable(path.parent, exc) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, Unwritable) or (isinstance(exc, (OSError, RuntimeError)) and write_failure(exc)):
            raise unwritable(path, exc) from None
        raise


def save_torch(obj, path) -> str:
    """``torch.save`` atomically and byte-reproducibly; return the file's sha256.

    torch.save names the archive's folder after the file, so the object is serialized to memory
    first: the bytes then depend on the content only, not on the temporary name.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path, rows: list[dict]) -> None:
    """Rows as CSV with the union of their keys as columns (first-seen order); missing cells empty."""
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["epoch"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def read_json(path, needed_by: str = "this stage", hint: str = "", numbers: tuple = (), remedy: str = REMAKE,
              kind: type = dict, fractions: tuple = ()):
    """A JSON object (or another ``kind``: a list) from a file, or a one-line error naming it
    (missing, with ``hint`` on how to make it, or damaged, with ``remedy``: by default, a workflow
    output's). The keys ``numbers`` must hold finite numbers (a metrics file's parameter count,
    say), the keys ``fractions`` numbers from 0 to 1 (its top-1)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DfnasError(f"{needed_by} needs {path}, which does not exist" + (f" ({hint})" if hint else "")) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise damaged(path, "not valid JSON", exc, remedy) from None
    except OSError as exc:
        raise damaged(path, "cannot read it", exc, remedy) from None
    if not isinstance(data, kind):
        raise damaged(path, f"holds a {type(data).__name__}", ValueError(f"not a JSON {kind.__name__}"), remedy)
    for key in (*numbers, *fractions):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise damaged(path, f"{key} is {value!r}", ValueError("not a finite number"), remedy)
        if key in fractions and not 0 <= value <= 1:
            raise damaged(path, f"{key} is {value!r}", ValueError("not a fraction from 0 to 1"), remedy)
    return data


def format_seconds(s: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress(t0: float, done: int, total: int, start: int = 0) -> str:
    """``elapsed ..  eta ..`` after ``done`` of ``total`` units of work, ``start`` of them finished
    before this process began (a resume), timed from ``t0`` (``time.time()`` at the start)."""
    elapsed = time.time() - t0
    eta = elapsed / max(1, done - start) * (total - done)
    return f"elapsed {format_seconds(elapsed)}  eta {format_seconds(eta)}"


def versions() -> dict:
    import torch

    import dfnas  # the package's own version; dfnas/__init__.py imports nothing

    return {"dfnas": dfnas.__version__, "torch": str(torch.__version__)}


def peak_rss_kib() -> int:
    """This process's peak resident memory in KiB: Linux's VmHWM, which starts afresh at exec
    (``ru_maxrss`` keeps the value of the process that forked it), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
