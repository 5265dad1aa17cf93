"""Secret references to values (env, file, systemd credential, encrypted), master keys, and the redactor
that keeps every resolved value out of logs, the state store and HTTP answers."""
