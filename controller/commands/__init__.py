"""CLI command groups, one module each; `controller.cli` registers them."""
