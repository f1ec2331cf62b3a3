"""Pipeline stages: one module per stage; the contract is in ``base``."""
