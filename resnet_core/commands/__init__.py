"""The command lines (console scripts, see pyproject.toml): each module has ``main(argv)``, which
returns an exit code, and ``console()``, the installed entry point. Shared flags: resnet_core/cli.py."""
