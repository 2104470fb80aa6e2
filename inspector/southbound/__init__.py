"""From the hosts to the inspector: the agents' streams, liveness, the monitors' JSON events.

``gateway`` serves ``AgentGateway``; ``messages`` checks what an agent sends;
``json_events`` reads the seeds' JSON southbound event (``http_events`` takes it over HTTP); ``liveness`` turns
streams and silence into each host's liveness. Imports ``response.trigger``
(the fault it hands on) and nothing else of the inspector.
"""
