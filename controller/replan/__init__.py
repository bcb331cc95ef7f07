"""Replanning: one cycle (observe → forecast → scenarios → plan → store → execute), recorded in the database, and
the cron scheduler that runs cycles under the database lease so that one controller replans per tick."""
