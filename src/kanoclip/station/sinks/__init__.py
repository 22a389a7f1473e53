"""Where results go besides the history, from `watch` and `serve` alike: a webhook, an MQTT broker, an OPC UA
server. A sink never slows inspection and never loses a result from the history: each runs beside the scoring and
reports what it could not deliver as an event."""
