"""Routes of the plan API, one module per resource; each route is thin (parse, call a repository or the
controller, shape the answer)."""
