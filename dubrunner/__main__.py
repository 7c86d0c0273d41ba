from __future__ import annotations

from dubrunner.cli import main

main()
