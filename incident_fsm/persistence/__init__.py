"""The database: engine set-up, the store (one repository per aggregate) and the outage journal."""
