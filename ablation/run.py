"""Thin wrapper, kept so that `python ablation/run.py ...` works from a checkout: the command is
`resnet-grid` (resnet_core/commands/grid.py), installed as a console script by `pip install .`."""

from resnet_core.commands.parsers import resnet_grid

if __name__ == "__main__":
    resnet_grid()
