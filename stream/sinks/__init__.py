"""Where the stream's readings, warnings and scores go besides the embedded store.

- `points`: the InfluxDB schema as line protocol (pure).
- `spool`: the durable local queue of lines waiting for InfluxDB (SQLite).
- `influx`: `InfluxSink`, the production sink: spool on flush, ship in the background.
- `tee`: `TeeSink`, one sink call to several sinks (the store and InfluxDB).

docs/influxdb.md describes the schema, the failure behaviour and the settings.
"""
