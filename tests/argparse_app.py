"""A real argparse app (arg_style argparse): writes what it parsed to $TRAIN_SWEEP_RUN_DIR/args.json."""

import argparse
import json
import os

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--name", type=str, default="x")
p.add_argument("--shift", type=float, default=0.0)
p.add_argument("--layers", type=int, nargs="*", default=[1])
p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
p.add_argument("--opt", type=str, default="default-kept")
p.add_argument("--extra", type=json.loads, default=None)
args = p.parse_args()
with open(os.path.join(os.environ["TRAIN_SWEEP_RUN_DIR"], "args.json"), "w") as f:
    json.dump(vars(args), f)
