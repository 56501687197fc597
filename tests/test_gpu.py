"""On real NVIDIA GPUs (skipped without one): placement, CUDA_VISIBLE_DEVICES mapping, packing, and memory
released after Ctrl+C. Run with `python -m pytest -m gpu -s -n 0 tests/test_gpu.py` to see the figures."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.gpu
EXAMPLE = ROOT / "examples" / "train.py"


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        import torch

        if not torch.cuda.is_available():
            return None
        return pynvml
    except Exception:
        return None


NVML = _nvml()
if NVML is None:
    pytest.skip("needs an NVIDIA GPU, NVML and PyTorch with CUDA", allow_module_level=True)
COUNT = NVML.nvmlDeviceGetCount()


def uuid(i: int) -> str:
    u = NVML.nvmlDeviceGetUUID(NVML.nvmlDeviceGetHandleByIndex(i))
    return (u.decode() if isinstance(u, bytes) else u).removeprefix("GPU-")


def used_gb(i: int) -> float:
    return NVML.nvmlDeviceGetMemoryInfo(NVML.nvmlDeviceGetHandleByIndex(i)).used / 2**30


class Sampler(threading.Thread):
    """Samples NVML every 0.2 s: memory used and compute processes per GPU."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, list[float], list[int]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            handles = [NVML.nvmlDeviceGetHandleByIndex(i) for i in range(COUNT)]
            mem = [NVML.nvmlDeviceGetMemoryInfo(h).used / 2**30 for h in handles]
            procs = [len(NVML.nvmlDeviceGetComputeRunningProcesses(h)) for h in handles]
            self.samples.append((time.time(), mem, procs))
            time.sleep(0.2)


def run_sampled(gsweep, *args: str) -> tuple[int, float]:
    """Run the example sweep while NVML is sampled; (most processes on one GPU, peak GB used on one GPU)."""
    sampler = Sampler()
    sampler.start()
    p = gsweep.run("--command", f"python {EXAMPLE}", *args, timeout=600, trainer=False)
    sampler.stop.set()
    sampler.join()
    assert p.returncode == 0, p.stdout + p.stderr
    assert not any("out of memory" in r["stderr"].lower() for r in gsweep.results())
    most = max(max(procs) for _, _, procs in sampler.samples)
    return most, max(max(mem) for _, mem, _ in sampler.samples)


@pytest.fixture
def gsweep(sweep):
    sweep.real_nvml = True
    return sweep


def test_each_run_uses_the_gpu_it_was_given(gsweep):
    entries = [{"lr": 0.01 * (i + 1), "hidden": 32, "epochs": 3} for i in range(2 * COUNT)]
    gsweep.config(entries)
    p = gsweep.run("--command", f"python {EXAMPLE}", "--metric", "val_loss", timeout=600, trainer=False)
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    for r in gsweep.results():
        line = next(x for x in r["stdout"].splitlines() if x.startswith("device cuda:0"))
        seen = line.split("uuid=")[1].split()[0]
        print(f"{r['model_name']}: gpu_id={r['gpu_id']} NVML uuid={uuid(r['gpu_id'])} torch uuid={seen}")
        assert seen == uuid(r["gpu_id"])
        assert f"CUDA_VISIBLE_DEVICES={r['gpu_id']}" in line
    assert {r["gpu_id"] for r in gsweep.results()} == set(range(COUNT))


def test_packing_two_per_gpu_under_a_memory_threshold(gsweep):
    baseline = max(used_gb(i) for i in range(COUNT))
    entries = [{"lr": 0.01, "hidden": 32, "epochs": 40, "mem_gb": 8.0, "seed": i} for i in range(4 * COUNT)]
    gsweep.config(entries)
    most, peak = run_sampled(gsweep, "--max-processes-per-gpu", "2", "--memory-threshold-gb", f"{baseline + 20:.0f}")
    print(f"baseline {baseline:.2f} GB, peak {peak:.2f} GB used on one GPU, most processes on one GPU: {most}")
    assert most <= 2
    assert {r["gpu_id"] for r in gsweep.results()} == set(range(COUNT))


def test_ctrl_c_releases_gpu_memory_within_seconds(gsweep):
    idle = [used_gb(i) for i in range(COUNT)]
    gsweep.config([{"lr": 0.01, "epochs": 100000, "mem_gb": 4.0, "seed": i} for i in range(2 * COUNT)])
    proc = gsweep.start("--command", f"python {EXAMPLE}", "--max-processes-per-gpu", "2", trainer=False)
    gsweep.wait_for(lambda: all(used_gb(i) > idle[i] + 7 for i in range(COUNT)), timeout=120, what="memory in use")
    busy = [used_gb(i) for i in range(COUNT)]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    gsweep.wait_for(lambda: all(used_gb(i) < idle[i] + 0.5 for i in range(COUNT)), timeout=30, what="memory freed")
    freed = time.monotonic() - t0
    out, err = proc.communicate(timeout=30)
    print(f"idle {[f'{g:.2f}' for g in idle]} GB, busy {[f'{g:.2f}' for g in busy]} GB, "
          f"back to idle {freed:.2f}s after SIGINT")
    assert proc.returncode == 130, out + err
    partial = json.loads((Path(gsweep.dir) / "train_sweep_results.json.partial").read_text())
    assert {r["state"] for r in partial} == {"interrupted"}
    assert freed < 15


@pytest.mark.skipif(COUNT < 2, reason="needs 2 GPUs")
def test_a_two_gpu_run_sees_both_gpus(gsweep):
    script = gsweep.dir / "two.py"
    script.write_text(
        "import os, torch\n"
        "print('count', torch.cuda.device_count())\n"
        "print('uuids', ' '.join(str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())))\n"
        "print('visible', os.environ['CUDA_VISIBLE_DEVICES'])\n"
    )
    gsweep.config({"runs": [{"n": 0, "gpus_per_run": 2}, {"n": 1}]})
    p = gsweep.run("--command", f"python {script}", timeout=300, trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    wide, narrow = gsweep.results()
    lines = dict(line.split(" ", 1) for line in wide["stdout"].splitlines())
    print(f"2-GPU run: gpu_id={wide['gpu_id']} {lines}")
    assert lines["count"] == "2" and sorted(wide["gpu_id"]) == [0, 1]
    assert lines["uuids"].split() == [uuid(g) for g in wide["gpu_id"]]
    assert "count 1" in narrow["stdout"]


def test_declared_memory_packs_without_overpacking(gsweep):
    total = NVML.nvmlDeviceGetMemoryInfo(NVML.nvmlDeviceGetHandleByIndex(0)).total / 2**30
    hold = round(0.4 * total, 1)
    gsweep.config({"gpu_memory_gb": hold + 1, "runs": [{"lr": 0.01, "epochs": 10, "mem_gb": hold, "seed": i}
                                                       for i in range(3 * COUNT)]})
    most, peak = run_sampled(gsweep, "--max-processes-per-gpu", "8", "--memory-threshold-gb", f"{total:.0f}")
    print(f"declared {hold + 1:.1f} GB per run on {total:.0f} GB GPUs: at most {most} runs on a GPU, peak {peak:.1f} GB")
    assert most == 2  # two fit, a third does not


def mps_processes() -> list[str]:
    import psutil

    return [f"{p.info['name']} {p.pid}" for p in psutil.process_iter(["name", "status"])
            if (p.info["name"] or "").startswith("nvidia-cuda-mps") and p.info["status"] != psutil.STATUS_ZOMBIE]


@pytest.mark.skipif(shutil.which("nvidia-cuda-mps-control") is None, reason="needs nvidia-cuda-mps-control")
def test_mps_the_runs_are_clients_of_the_sweep_s_daemon_and_nothing_is_left(gsweep, mps_alone):
    import psutil

    assert mps_processes() == [], "an MPS daemon already runs here"
    gpu = COUNT - 1  # the sweep's only GPU; any other must not get the MPS server
    seen: dict[int, set[str]] = {i: set() for i in range(COUNT)}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for i in range(COUNT):
                for proc in NVML.nvmlDeviceGetComputeRunningProcesses(NVML.nvmlDeviceGetHandleByIndex(i)):
                    try:
                        seen[i].add(psutil.Process(proc.pid).name())
                    except psutil.Error:
                        pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    gsweep.config([{"lr": 0.01, "hidden": 64, "epochs": 200, "seed": i} for i in range(4)])
    p = gsweep.run("--command", f"python {EXAMPLE}", "--mps", "--gpus", str(gpu), "--max-processes-per-gpu", "auto",
                   "--no-live", timeout=600, trainer=False)
    stop.set()
    sampler.join()
    log = (gsweep.dir / "outputs" / "sweep.log").read_text()
    print(p.stdout, log, f"processes NVML listed: {seen}", sep="\n")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "MPS: control daemon started" in log
    assert any(name.startswith("nvidia-cuda-mps") for name in seen[gpu]), "the runs were not MPS clients"
    assert not any(name.startswith("nvidia-cuda-mps") for i, names in seen.items() if i != gpu for name in names)
    footprints = [float(line.split("footprint ")[1].split()[0]) * (1024 if " GB a run" in line else 1)
                  for line in log.splitlines() if " footprint " in line and " a run (" in line]
    assert all(mb > 100 for mb in footprints), footprints  # the runs' own, not the MPS server's 66 MB
    time.sleep(0.5)
    print(subprocess.run(["ps", "-eo", "pid,ppid,stat,comm"], capture_output=True, text=True, check=False).stdout)
    assert mps_processes() == [], "the MPS daemon outlived the sweep"
