"""A real Hydra app: writes the config it received, with Python types, to $TRAIN_SWEEP_RUN_DIR/cfg.json."""

import json
import os

import hydra
from omegaconf import OmegaConf


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg) -> None:
    data = OmegaConf.to_container(cfg, resolve=True)
    typed = {k: [v, type(v).__name__] for k, v in data.items() if k != "training"}
    typed["training"] = {k: [v, type(v).__name__] for k, v in data["training"].items()}
    with open(os.path.join(os.environ["TRAIN_SWEEP_RUN_DIR"], "cfg.json"), "w") as f:
        json.dump(typed, f)


if __name__ == "__main__":
    main()
