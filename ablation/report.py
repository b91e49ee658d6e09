"""Thin wrapper, kept so that `python ablation/report.py ...` works from a checkout: the command is
`resnet-grid-report` (resnet_core/commands/grid_report.py), installed as a console script by `pip install .`."""

from resnet_core.commands.parsers import resnet_grid_report

if __name__ == "__main__":
    resnet_grid_report()
