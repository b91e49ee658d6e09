"""Thin wrapper, kept so that `python studies/run.py ...` works from a checkout: the command is
`resnet-study` (resnet_core/commands/study.py), installed as a console script by `pip install .`."""

from resnet_core.commands.parsers import resnet_study

if __name__ == "__main__":
    resnet_study()
