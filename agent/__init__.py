"""doctor-agent: per-host checkers streaming level-triggered state to the inspector."""
