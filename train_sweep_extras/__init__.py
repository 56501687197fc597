"""train_sweep's optional features, one module per concern, beside the scheduler (train_sweep.py).

They plug in only through the scheduler's protocols (RunSource, Launcher, Placement, Backend) and its one
registry, `train_sweep.EXTRAS`; each imports its own library when first used and says in one line what to
install when it is missing.

    space.py        a search's space: parameters, the config's "search" block, Hydra's search syntax
    search.py       the Optuna search and pruners (SearchSource, a RunSource)
    sweepfiles.py   W&B and Protein sweep files
    slurm.py        --backend slurm through submitit (a Backend: launcher, slots, the task in each job)
    mps.py          --mps: NVIDIA's MPS daemon for the local runs
    tensorboard.py  metrics from TensorBoard event files
    bestk.py        --top-k: checkpoints kept in the K best runs only
    tools.py        report, list, status, watch, cleanup
    plots.py        report --plots
    api.py          the Python API: train_sweep.run(), train_sweep.load()
"""
