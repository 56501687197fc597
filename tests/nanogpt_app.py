"""A nanoGPT-style app (arg_style equals): its configurator reads --key=value with ast.literal_eval, falls
back to the text, and insists on the type of the default, as nanoGPT's configurator.py does."""

import json
import os
import sys
from ast import literal_eval

learning_rate = 6e-4
max_iters = 5000
compile = True
device = "cuda"
wandb_project = "owt"
betas = [0.9, 0.95]
init_from = None
tag = "1"

for arg in sys.argv[1:]:
    assert arg.startswith("--"), arg
    key, val = arg[2:].split("=", 1)
    assert key in globals(), f"Unknown config key: {key}"
    try:
        attempt = literal_eval(val)
    except (SyntaxError, ValueError):
        attempt = val
    if globals()[key] is not None:
        assert type(attempt) == type(globals()[key]), (key, attempt)  # noqa: E721
    globals()[key] = attempt

out = {k: globals()[k] for k in ("learning_rate", "max_iters", "compile", "device", "wandb_project", "betas",
                                  "init_from", "tag")}
with open(os.path.join(os.environ["TRAIN_SWEEP_RUN_DIR"], "cfg.json"), "w") as f:
    json.dump(out, f)
