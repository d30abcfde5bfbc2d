"""The DashScope wire protocol: client, wire models, response-to-error table, limits, polling. No Prefect."""
