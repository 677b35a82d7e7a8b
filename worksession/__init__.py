"""Work Session Service: command line, settings and wiring."""
