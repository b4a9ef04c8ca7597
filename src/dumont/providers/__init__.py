"""Cloud providers as plug-ins: one folder each, all speaking the records of ``providers.base``."""
