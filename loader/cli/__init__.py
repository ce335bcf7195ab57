"""The `sluice` command (app.py), one module per group of commands."""
