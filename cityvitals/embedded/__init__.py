"""The embedded mode: every package composed into one process.

This subpackage is the composition root, the only place that imports edge,
gateway, stream and alerts together. The rest of `cityvitals` stays light
(no faust, no aiomqtt); the CLI imports this lazily, when `demo` runs.
"""
