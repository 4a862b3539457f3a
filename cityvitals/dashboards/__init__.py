"""Grafana dashboards as code (grafana-foundation-sdk), and provisioning them.

`boards` builds every dashboard from the schema the sinks write;
`files` writes them (and nothing else) for Grafana's file provisioning under
deploy/grafana/; `provision` pushes folder, data source and dashboards to
a running Grafana through grafana-client. Server side only: the edge never
imports this.
"""
