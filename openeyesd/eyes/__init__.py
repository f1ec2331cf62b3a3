"""The eye library: landmarks, closed-eye assessment, donor choice, transfer and blend.

Usable on its own (no ledger, no daemon); the pipeline stages call it.
"""
