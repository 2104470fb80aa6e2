"""What the inspector accepts in one agent message (inspector/southbound/gateway.py checks, the agent stays within)."""

MAX_ID = 255          # characters of an identifier: host, component, fault type, checker, check
MAX_TEXT = 1024       # characters of a text: description, detail, crash
MAX_DETAILS = 64      # entries of a component's details
MAX_COMPONENTS = 1000  # per Hello
MAX_BATCH = 1000      # events per batch
MAX_CHECKERS = 64     # per AgentHealth, and checks per checker
MAX_RUNS = 8          # recent runs per check in AgentHealth
