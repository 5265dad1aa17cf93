"""The command line: the only place that prints and sets exit codes. Commands, text reports, the client
of a running daemon's API, drop-in files, secrets commands and the demo."""
