from __future__ import annotations
import click
@click.command()
def apply() -> None:
    """placeholder"""
