"""cityvitals: a city's vital signs, watched from sensor node to on-call phone.

This package is the shared vocabulary: the message contract, the device
registry, errors, clocks and the command line. It imports no faust, aiomqtt
or Kafka code, so every other package (the edge agent included) can use it.
"""

__version__ = "0.1.0"
