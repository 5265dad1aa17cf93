"""Reading the YAML: the loader with FILE:LINE:COL marks, the models, one validator for the daemon and
`validate-config`, durations, and the watcher that asks for a reload when the files change."""
