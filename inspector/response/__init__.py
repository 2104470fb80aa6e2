"""What the leader does about a fault: policy, correlation, alarms, fencing, the recovery journal.

``responder`` is the entry point (a fault, a clear, an enabled host);
``recovery`` runs a fencing incident step by step, journalled through
``durable``; ``fencing`` powers hosts off over IPMI; ``correlate`` caches the
resource map (host → servers, ports); ``alarms`` holds the active alarms;
``policy`` reads the administrator's rules; ``trigger`` is the fault as
received. Imports ``ha`` (the journal's store, the term) and ``notifier``.
"""
