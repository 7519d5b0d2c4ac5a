"""Real servers for the tests: each test session starts its own instances on free ports."""
