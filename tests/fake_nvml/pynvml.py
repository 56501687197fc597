"""A stand-in for NVIDIA's `pynvml` (nvidia-ml-py), put first on PYTHONPATH by the tests.

Driven by the JSON state file named in $FAKE_NVML_STATE, re-read on every call so that a test can
change it mid-sweep:

    {"gpus": [{"name": "Fake H100", "total_mb": 81920, "used_mb": 500, "util": 0, "fail": false,
               "fail_reads": 0}],
     "procs_dir": "/tmp/.../procs"}

Processes "use" memory by writing <procs_dir>/<pid>.json = {"gpu": 0, "mb": 2048} (the fake trainer
does); a process that has exited stops counting, as on a real GPU. Without the state file, nvmlInit
fails the way it does on a machine without an NVIDIA driver.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

MB = 1024 * 1024


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


def _state() -> dict:
    path = os.environ.get("FAKE_NVML_STATE", "")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found") from None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _procs(state: dict, index: int) -> list[tuple[int, int]]:
    out = []
    folder = state.get("procs_dir")
    if not folder or not os.path.isdir(folder):
        return out
    for entry in os.listdir(folder):
        if not entry.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, entry)) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        pid = int(entry[:-5])
        if info.get("gpu") == index and _alive(pid):
            out.append((pid, int(info.get("mb", 0))))
    return out


def _gpu(handle: int) -> dict:
    state = _state()
    gpu = state["gpus"][handle]
    if gpu.get("fail"):
        raise NVMLError("GPU is lost")
    return gpu


def nvmlInit() -> None:
    _state()


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return len(_state()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if index >= nvmlDeviceGetCount():
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return _gpu(handle).get("name", "Fake GPU")


def nvmlDeviceGetUUID(handle: int) -> str:
    return f"GPU-fake-{handle}"


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    gpu = _gpu(handle)
    if gpu.get("fail_reads"):  # a transient error: this reading fails, the next ones work again
        state = _state()
        state["gpus"][handle]["fail_reads"] -= 1
        tmp = os.environ["FAKE_NVML_STATE"] + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, os.environ["FAKE_NVML_STATE"])
        raise NVMLError("Unknown Error")
    used = gpu.get("used_mb", 0) + sum(mb for _, mb in _procs(_state(), handle))
    total = gpu.get("total_mb", 81920)
    return SimpleNamespace(total=total * MB, used=used * MB, free=max(0, total - used) * MB)


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=_gpu(handle).get("util", 0), memory=0)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[SimpleNamespace]:
    _gpu(handle)
    return [SimpleNamespace(pid=pid, usedGpuMemory=mb * MB) for pid, mb in _procs(_state(), handle)]


def nvmlDeviceGetGraphicsRunningProcesses(handle: int) -> list[SimpleNamespace]:
    _gpu(handle)
    return []
