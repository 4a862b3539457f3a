"""The stream layer: faust agents around pure detectors and early-warning rules."""
