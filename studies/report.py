"""Thin wrapper, kept so that `python studies/report.py ...` works from a checkout: the command is
`resnet-study-report` (resnet_core/commands/study_report.py), installed as a console script by `pip install .`."""

from resnet_core.commands.parsers import resnet_study_report

if __name__ == "__main__":
    resnet_study_report()
