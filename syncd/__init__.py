"""syncd: keeps a CRM up to date from salespeople's mailboxes and calendars."""

__version__ = "0.1.0"
