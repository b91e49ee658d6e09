"""Thin wrapper, kept so that ``python -m resnet_core.train ...`` works (reports print it as the
command that reproduces a run): the command is ``resnet-train`` (resnet_core/commands/train.py)."""

from resnet_core.commands.parsers import resnet_train

if __name__ == "__main__":
    resnet_train()
