#!/usr/bin/env python3
"""Ray Tune as a peer: one trial per job, one (logical) GPU per trial, G trials at once.
    python peer_ray_tune.py GPUS JOBS_JSON LOG JOB_SCRIPT      (run with a Python that has ray[tune])"""

import json
import os
import subprocess
import sys

import ray
from ray import tune

gpus, durations, log, job = int(sys.argv[1]), json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4]
python = os.environ.get("JOB_PYTHON", sys.executable)
ray.init(num_cpus=gpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def trainable(config: dict) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(str(int(g)) for g in ray.get_gpu_ids()))
    d = durations[config["id"]]
    subprocess.run([python, job, f"id={config['id']}", f"duration={d}", f"log={log}"], env=env, check=True)


tuner = tune.Tuner(
    tune.with_resources(trainable, {"cpu": 1, "gpu": 1}),
    param_space={"id": tune.grid_search(list(range(len(durations))))},
    tune_config=tune.TuneConfig(max_concurrent_trials=gpus),
    run_config=tune.RunConfig(storage_path=os.path.abspath("ray_results"), verbose=0),
)
tuner.fit()
