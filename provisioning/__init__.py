"""What a field technician uses to bring up a new unit; ``doorway.toml.example`` is the settings template."""
