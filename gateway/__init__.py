"""MQTT → stream bridge: validate, drop duplicates, enrich, dead-letter the rest."""
