"""Training: recipes, loss, resumable checkpoints, the loop (single process or
torchrun), and the branch-weight search.

`python -m edgederm.training ARGS` is `edgederm train ARGS`, the form torchrun launches:
    torchrun --nproc_per_node 4 -m edgederm.training --data ... --out ...
"""
