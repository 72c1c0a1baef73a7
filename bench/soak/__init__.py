"""Soak: mixed, hostile and abandoned traffic for minutes while versions roll; RSS over time."""
