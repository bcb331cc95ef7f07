"""`fleetwise demo`: the whole loop — plan API, cron replanning, executor, simulated GPUs and real CPU engines, a trace
replayed through the API — in one process on the embedded SQLite default (`controller.demo.run.Demo`)."""
