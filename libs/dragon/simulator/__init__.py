"""The simulator service: the federation's co-simulator (``dragon.sim``) behind MQTT v5 request/response."""
