"""GSM8K token-savings evaluation and reports."""
