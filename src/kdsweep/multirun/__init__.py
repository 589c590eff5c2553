"""Plain multiruns (``kdsweep -m`` without the sweeper): their jobs read back from
their folders and the tables written at the end."""
