"""The configuration: every key declared once with its default and range (`schema`), YAML
loading with "did you mean" (`load`), and command-line overrides (`overrides`)."""
