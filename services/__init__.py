"""Management services: what a change does (validate, write in one transaction, audit,
announce), apart from how it arrives (api/ controllers) or where it is stored (store/)."""
