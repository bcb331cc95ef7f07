"""The only package that wires the others together: FastAPI plan API, cron replanning, settings and the
Typer CLI (`fleetwise`).

May import: every other package. Nothing imports controller.
"""
