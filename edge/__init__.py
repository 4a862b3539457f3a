"""The edge agent: drivers that read sensor nodes, a buffer, and the MQTT publisher.

Installs with `pip install 'cityvitals[edge]'`: aiomqtt and pyserial, no
numpy, no faust.
"""
