"""The historical import: the people, accounts and past activity that mailboxes and address
books already know, harvested once (``syncd import``)."""
