"""Shared helpers, the ground floor: errors, atomic files and locks, value checks,
formatting, statistics, secret masking, checksums, signals and store URLs. Nothing here
imports the rest of kdsweep."""
