"""Does a server serve the real Prefect client? `real_client.check` runs a flow (`flow`, a
script run by the real client) through a counting proxy (`proxy`) and reads everything back."""
