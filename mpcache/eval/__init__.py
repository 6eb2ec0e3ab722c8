"""Offline accuracy evaluation: tasks (needle, lines, ppl), a prefill-once runner, records, plots."""
