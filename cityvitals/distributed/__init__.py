"""The distributed mode's composition root: each role of `cityvitals run` wired up.

Like `cityvitals.embedded`, the only place (besides the CLI) that knows
every package; imported lazily, so `import cityvitals` stays light.
"""
